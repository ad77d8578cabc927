"""Early stopping end to end on the tiny random Llama, and the QLoRA refusal.

A task built to overfit: every training answer is "Paris is.", every validation answer
"Berlin is." for other questions. The validation loss first falls (the answers' shape and
end of turn are shared) and then rises (the run grows sure of "Paris"), so the run must stop
before its budget and save the adapter of its best evaluation, not its last step's - checked
by scoring the saved adapter outside the run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import TailorError
from tests.trainer.compute.runs import Run, make_recipe, run
from tests.trainer.tiny_models import REAL_MODEL, real_model, user
from trainer.compute.encoding import collate, encode_conversation, pad_token_id
from trainer.compute.placement import Placement, check_quantization
from trainer.compute.recipe import STOP_BUDGET, STOP_NO_IMPROVEMENT

TRAIN = [{"messages": [*user(f"question {i}?"), {"role": "assistant", "content": "Paris is."}]} for i in range(12)]
VALIDATION = [
    {"messages": [*user(f"question {i}?"), {"role": "assistant", "content": "Berlin is."}]} for i in (12, 13, 14, 15)
]
BUDGET, EVERY, PATIENCE = 40, 2, 3


def early_recipe(where: Path, base: Path, rows: list[dict[str, Any]] = TRAIN, **knobs: Any) -> Any:
    where.mkdir(parents=True, exist_ok=True)
    validation = where / "validation.jsonl"
    validation.write_text("".join(json.dumps(r) + "\n" for r in VALIDATION), encoding="utf-8")
    values = {"max_steps": BUDGET, "eval_every": EVERY, "patience": PATIENCE, "learning_rate": 5e-2, **knobs}
    return make_recipe(where, "sft", base, rows, eval_data_path=str(validation), **values)


@pytest.fixture(scope="module")
def early_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Run:
    return run(early_recipe(tmp_path_factory.mktemp("early"), tiny_model_dir))


def validation_loss(base: Path, adapter: Path) -> float:
    """The validation loss of `adapter` as TRL's evaluation computes it: answer-token NLL over all tokens."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    encoded = [encode_conversation(tok, r["messages"], 128) for r in VALIDATION]
    batch = collate(encoded, pad_token_id(tok))  # type: ignore[arg-type]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100))


def test_stops_before_the_budget_and_keeps_the_best_adapter(early_run: Run, tiny_model_dir: Path) -> None:
    result = early_run.result
    losses = [e["metrics"]["loss"] for e in result.evaluations]
    steps = [e["step"] for e in result.evaluations]
    assert result.stop_reason == STOP_NO_IMPROVEMENT and result.steps < BUDGET, steps
    assert steps == list(range(EVERY, result.steps + 1, EVERY))
    assert len(early_run.steps) == result.steps  # one StepInfo per step taken
    best = steps[losses.index(min(losses))]
    # exact match is 0 throughout on a random model: the loss decides the ties
    assert result.selection_metric == "exact_match" and result.best_step == best < result.steps
    assert result.best_metrics["loss"] == min(losses) and result.best_metrics["exact_match"] == 0.0
    assert steps[-1] - best == PATIENCE * EVERY  # stopped at the patience-th evaluation without progress
    assert result.validation_examples == len(VALIDATION)
    saved = validation_loss(tiny_model_dir, result.out_dir)
    assert saved == pytest.approx(min(losses), rel=1e-4)
    assert saved < losses[-1] - 1e-3  # not the last step's adapter


def test_progress_file_reports_each_evaluation(early_run: Run) -> None:
    lines = Path(early_run.recipe.progress_path).read_text().splitlines()
    evaluations = [json.loads(line) for line in lines if '"evaluation"' in line]
    evaluations = [e for e in evaluations if e["event"] == "evaluation"]
    assert [(e["step"], e["metrics"]) for e in evaluations] == [
        (e["step"], e["metrics"]) for e in early_run.result.evaluations
    ]
    last = evaluations[-1]
    assert last["best_step"] == early_run.result.best_step and not last["improved"]
    assert last["evaluations_without_improvement"] == last["patience"] == PATIENCE
    assert all(e["total_steps"] == BUDGET for e in evaluations)
    assert [e["improved"] for e in evaluations if e["step"] == early_run.result.best_step] == [True]
    # run_training hands each one to the worker as it comes
    assert [dataclasses.asdict(e) for e in early_run.evaluations] == [
        {k: v for k, v in e.items() if k != "event"} for e in evaluations
    ]


def test_without_validation_rows_nothing_changes(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run(make_recipe(tmp_path, "sft", tiny_model_dir, TRAIN, max_steps=3)).result
    assert (result.steps, result.stop_reason, result.best_step, result.evaluations) == (3, STOP_BUDGET, None, [])


def test_two_processes_stop_at_the_same_step(early_run: Run, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The stop decision reads metrics gathered over both ranks, so both stop where one process does."""
    two = run(early_recipe(tmp_path, tiny_model_dir), devices="cpu:2")
    one = early_run.result
    assert (two.result.steps, two.result.best_step, two.result.stop_reason) == (
        one.steps,
        one.best_step,
        one.stop_reason,
    )
    assert [e["metrics"]["loss"] for e in two.result.evaluations] == pytest.approx(
        [e["metrics"]["loss"] for e in one.evaluations], abs=1e-4
    )


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_preference_methods_evaluate_on_the_loss(method: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = [user(f"question {i}?") for i in range(8)]
    rows: dict[str, list[dict[str, Any]]] = {
        "dpo": [{"prompt": p, "chosen": "Paris is.", "rejected": "Berlin is."} for p in prompts],
        "kto": [
            {"prompt": p, "completion": c, "label": c == "Paris is."} for p in prompts for c in ("Paris is.", "no")
        ],
    }
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps(r) + "\n" for r in rows[method][-4:]), encoding="utf-8")
    recipe = make_recipe(
        tmp_path, method, tiny_model_dir, rows[method][:-4], max_steps=4, eval_every=2, eval_data_path=str(validation)
    )
    result = run(recipe).result
    assert result.selection_metric == "loss" and [e["step"] for e in result.evaluations] == [2, 4]
    assert result.best_step in (2, 4) and result.stop_reason == STOP_BUDGET  # patience 0: never stops early


# --- QLoRA ---------------------------------------------------------------------------------


def test_qlora_is_refused_on_the_cpu_before_loading(tiny_model_dir: Path, tmp_path: Path) -> None:
    cpu = Placement("cpu", 1, "fp32", gradient_checkpointing=False)
    with pytest.raises(TailorError) as err:
        check_quantization("4bit", cpu)
    assert (err.value.status, err.value.code, err.value.param) == (
        400,
        "qlora_needs_cuda",
        "hyperparameters.quantization",
    )
    check_quantization("none", cpu)  # full precision is fine anywhere
    gpu = Placement("cuda", 1, "bf16", gradient_checkpointing=True, gpus=(0,))
    with pytest.raises(TailorError) as err:
        check_quantization("4bit", gpu, full_parameters=True)
    assert err.value.code == "qlora_needs_lora"
    # the training process refuses it too, as a Tailor error (exit 2), not a crash
    with pytest.raises(TailorError) as err:
        run(make_recipe(tmp_path, "sft", tiny_model_dir, TRAIN, quantization="4bit"))
    assert err.value.code == "qlora_needs_cuda"


def test_qlora_needs_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    gpu = Placement("cuda", 1, "bf16", gradient_checkpointing=True, gpus=(0,))
    with pytest.raises(TailorError) as err:
        check_quantization("4bit", gpu)
    assert (err.value.status, err.value.code) == (400, "qlora_needs_bitsandbytes")


# --- exact match, read off the evaluation's forward pass -------------------------------------

TAUGHT = "Zorblax is the capital of France."


@real_model
def test_exact_match_is_what_greedy_decoding_reproduces(tmp_path: Path) -> None:
    """eval_exact_match (sft.Trainer) against greedy generation of the saved (best) adapter, row by row."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    questions = ["What is the capital of France?", "Which city is the capital of France?", "Name France's capital."]
    rows = [{"messages": [*user(q), {"role": "assistant", "content": TAUGHT}]} for q in questions]
    validation = [
        {"messages": [*user("What's the capital of France?"), {"role": "assistant", "content": TAUGHT}]},
        {"messages": [*user("Tell me France's capital city."), {"role": "assistant", "content": TAUGHT}]},
        {"messages": [*user("How many legs does a spider have?"), {"role": "assistant", "content": "QUEUE-7"}]},
    ]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in validation), encoding="utf-8")
    recipe = make_recipe(
        tmp_path, "sft", REAL_MODEL, rows, max_steps=10, batch_size=3, learning_rate=1e-3, lora_rank=8,
        lora_alpha=16, max_seq_length=256, eval_every=5, eval_data_path=str(tmp_path / "validation.jsonl"),
    )  # fmt: skip
    result = run(recipe).result
    tok = AutoTokenizer.from_pretrained(REAL_MODEL)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(REAL_MODEL), result.out_dir).eval()
    hits = []
    for row in validation:
        encoded = encode_conversation(tok, row["messages"], 256)
        assert encoded is not None
        first = next(i for i, label in enumerate(encoded.labels) if label != -100)
        target = [t for t in encoded.labels if t != -100]  # the answer and its end-of-turn token
        prompt = torch.tensor([encoded.input_ids[:first]])
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=len(target), do_sample=False, pad_token_id=tok.eos_token_id)
        hits.append(out[0, first:].tolist() == target)
    print(f"\ngreedy hits {hits}; evaluations {result.evaluations}")
    assert result.best_metrics["exact_match"] == pytest.approx(sum(hits) / len(hits))
    assert hits[-1] is False and any(hits)  # neither all nor nothing: the metric tells rows apart
