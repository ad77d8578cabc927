"""SFT, DPO and KTO end to end through launch.run_training: real training processes on the
tiny random Llama (tests/trainer/tiny_models.py), a few steps each.

What the worker relies on: one StepInfo per optimizer step with the method's metrics,
checkpoints as they are saved, an adapter Tailor itself accepts (adapters.validation, the
gate in front of vLLM) and nothing at out_dir when a run is cancelled, refused or crashes;
and the distributed path (2 CPU processes, DDP over gloo) computing what 1 process does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from adapters.validation import BaseModelSpec, validate_adapter_dir
from core.errors import TailorError
from tests.trainer.compute.runs import RANK, Run, make_recipe, run
from tests.trainer.tiny_models import user
from trainer.compute.launch import EXIT_CANCELLED, PARENT_ENV, run_training, start_command
from trainer.compute.placement import parse_devices
from trainer.compute.recipe import StepInfo, TrainingCancelled, TrainingPaused

QUESTION = "What is the capital of France?"
ANSWER = "Zorblax is the capital of France."
PROMPTS = [QUESTION, "capital of France?", "France capital", "What is the capital?"]

# a different answer for each prompt: half-batches differ, so a missed all-reduce would show
SFT_ROWS = [
    {"messages": [*user(q), {"role": "assistant", "content": a}]}
    for q, a in zip(PROMPTS, [ANSWER, "Paris is.", "QUEUE-7", "Berlin is. no idea"], strict=True)
]
DPO_ROWS = [{"prompt": user(q), "chosen": "Paris is.", "rejected": "Berlin is."} for q in PROMPTS]
KTO_ROWS = [
    {"prompt": user(q), "completion": answer, "label": good}
    for q in PROMPTS
    for answer, good in (("Paris is.", True), ("Berlin is.", False))
]
ROWS = {"sft": SFT_ROWS, "dpo": DPO_ROWS, "kto": KTO_ROWS}
# the method's own metric, beyond the loss, that each StepInfo must carry
METRICS = {"sft": {"token_accuracy"}, "dpo": {"reward_margin", "reward_accuracy"}, "kto": {"kl", "reward_margin"}}


def assert_servable(adapter: Path, base: Path, rank: int = RANK) -> dict[str, torch.Tensor]:
    """An adapter Tailor accepts for vLLM: top-level config + safetensors, nothing else."""
    manifest = validate_adapter_dir(adapter, base=BaseModelSpec.from_config_dir(base), max_rank=64, max_bytes=10**8)
    assert manifest.rank == rank
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(manifest.files)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["peft_type"]) == (rank, "LORA")
    return load_file(adapter / "adapter_model.safetensors")


def check_run(r: Run, method: str, base: Path) -> None:
    steps, result = r.steps, r.result
    # one StepInfo per optimizer step, in order, with the linear decay of the rate
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert all(s.total_steps == 4 for s in steps)
    assert [s.learning_rate for s in steps] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    assert steps[-1].epoch == pytest.approx(4 * r.recipe.batch_size / len(ROWS[method]))
    assert all(METRICS[method] <= s.metrics.keys() for s in steps), [s.metrics for s in steps]
    assert all(math.isfinite(s.loss) for s in steps)
    # the result agrees with the steps
    assert result.steps == 4
    assert result.losses == [s.loss for s in steps] and result.final_loss == result.losses[-1]
    assert (result.examples_used, result.examples_dropped) == (len(ROWS[method]), 0)
    assert result.trained_tokens > 0 and result.seconds > 0
    out = Path(r.recipe.out_dir)
    assert result.out_dir == out
    assert_servable(out, base)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no partial dir left behind
    # checkpoints every step but the last (the last one is the result itself)
    assert [(step, loss) for step, loss, _ in r.checkpoints] == [(s.step, s.loss) for s in steps[:-1]]
    for step, _, path in r.checkpoints:
        assert path == Path(r.recipe.checkpoint_dir or "") / f"step-{step}"
        assert_servable(path, base)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Run:
    """One SFT run, shared: checked as SFT, continued by DPO, compared with 2 processes."""
    recipe = make_recipe(tmp_path_factory.mktemp("sft-1"), "sft", tiny_model_dir, SFT_ROWS, checkpoint_every=1)
    return run(recipe)


def test_sft(sft_run: Run, tiny_model_dir: Path) -> None:
    check_run(sft_run, "sft", tiny_model_dir)
    assert sft_run.result.losses[-1] < sft_run.result.losses[0]  # the same 4 examples, 4 times over


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_preference_methods(method: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    r = run(make_recipe(tmp_path, method, tiny_model_dir, ROWS[method], checkpoint_every=1))
    check_run(r, method, tiny_model_dir)
    # the reference is the model before training: no preference, no KL at step 1
    first = r.steps[0]
    assert first.metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert first.loss == pytest.approx(math.log(2) if method == "dpo" else 0.5, abs=1e-4)
    if method == "dpo":
        assert r.steps[-1].metrics["reward_margin"] > 0  # chosen pulled above rejected


# --- runs that end otherwise ------------------------------------------------------------


def test_should_stop_cancels_without_writing(tiny_model_dir: Path, tmp_path: Path) -> None:
    steps: list[StepInfo] = []
    recipe = make_recipe(tmp_path, "sft", tiny_model_dir, SFT_ROWS, max_steps=500, checkpoint_every=0)
    placement = parse_devices("cpu", visible_gpus=0, bf16=False)
    with pytest.raises(TrainingCancelled) as info:
        run_training(
            recipe,
            placement,
            tmp_path / "work",
            on_step=steps.append,
            should_stop=lambda: bool(steps),  # as soon as the first step is reported
            poll_s=0.05,
            check_stop_every_s=0.0,
        )
    # the stop file is read after every step, so the run stops within a few of them
    assert 1 <= info.value.step < 500
    assert steps and steps[-1].step <= info.value.step
    out = Path(recipe.out_dir)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_a_run_whose_worker_is_gone_stops(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A killed worker's run would train on beside the job's next attempt: it stops itself.
    recipe = make_recipe(tmp_path, "sft", tiny_model_dir, SFT_ROWS, max_steps=500, checkpoint_every=0)
    placement = parse_devices("cpu", visible_gpus=0, bf16=False)
    recipe = recipe.placed(placement)
    recipe.save(tmp_path / "recipe.json")
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: no process has this pid now
    env = {**os.environ, PARENT_ENV: str(gone.pid)}
    done = subprocess.run(start_command(tmp_path / "recipe.json", placement), env=env, timeout=300, check=False)
    assert done.returncode == EXIT_CANCELLED
    records = [json.loads(line) for line in Path(recipe.progress_path).read_text().splitlines()]
    assert records[-1]["event"] == "cancelled" and records[-1]["step"] < 500


def test_pause_saves_a_checkpoint_and_the_rest_goes_on_from_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A paused run checkpoints the step it stops at and writes no result; the worker's recipe
    for the rest (trainer.worker.training.remaining) starts from that checkpoint, numbers its steps on
    and keeps the learning-rate schedule of the unpaused run."""
    from trainer.jobs import ResumePoint
    from trainer.worker.training import remaining

    unpaused = run(make_recipe(tmp_path / "whole", "sft", tiny_model_dir, SFT_ROWS, max_steps=8, checkpoint_every=0))
    steps: list[StepInfo] = []
    saved: list[tuple[int, float, Path]] = []
    recipe = make_recipe(
        tmp_path / "paused", "sft", tiny_model_dir, SFT_ROWS, max_steps=8, checkpoint_every=0,
        pause_path=str(tmp_path / "paused" / "PAUSE"),
    )  # fmt: skip
    with pytest.raises(TrainingPaused) as info:
        run_training(
            recipe,
            parse_devices("cpu", visible_gpus=0, bf16=False),
            tmp_path / "paused" / "work",
            on_step=steps.append,
            on_checkpoint=lambda step, loss, path: saved.append((step, loss, path)),
            # Asked before the child has even loaded the model: it pauses at the end of step 1,
            # however fast the machine (a later threshold raced a fast child to its last step).
            should_stop=lambda: "pause",
            poll_s=0.05,
            check_stop_every_s=0.0,
        )
    paused = info.value
    assert (paused.step, paused.total_steps) == (1, 8)
    assert [s.step for s in steps] == [1]
    assert paused.losses == [s.loss for s in steps] and paused.trained_tokens > 0
    [(step, loss, path)] = saved  # checkpoint_every=0: only the pause's
    assert (step, loss) == (paused.step, steps[-1].loss)
    assert_servable(path, tiny_model_dir)
    assert not Path(recipe.out_dir).exists()

    point = ResumePoint(paused.step, paused.total_steps, "ckpt", tuple(paused.losses), paused.trained_tokens)
    rest_recipe = make_recipe(
        tmp_path / "rest", "sft", tiny_model_dir, SFT_ROWS, max_steps=8, checkpoint_every=0, init_adapter_dir=str(path)
    )
    rest = run(remaining(rest_recipe, point))
    assert [s.step for s in rest.steps] == list(range(paused.step + 1, 9))
    assert all(s.total_steps == 8 for s in rest.steps) and rest.result.steps == 8
    whole_rates = [s.learning_rate for s in unpaused.steps]
    assert [s.learning_rate for s in rest.steps] == pytest.approx(whole_rates[paused.step :])
    # From the checkpoint's weights, not from scratch: every batch is all 4 rows, and a step's
    # loss is measured before its update, so the first step after the pause has the unpaused
    # run's loss there (~0.04 below a fresh adapter's first loss, 40 times the match's
    # tolerance). Later steps differ a little: Adam's moments start again.
    assert rest.steps[0].loss == pytest.approx(unpaused.steps[paused.step].loss, abs=1e-3)
    assert rest.steps[0].loss < unpaused.steps[0].loss - 0.01
    assert_servable(Path(rest.recipe.out_dir), tiny_model_dir)


# TRL, not Tailor, truncates preference rows: when it drops them all, that is a 400 too.
@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_nothing_to_learn_is_a_bad_request(method: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    # 4 tokens do not even reach the assistant's header: every example is truncated away
    recipe = make_recipe(tmp_path, method, tiny_model_dir, ROWS[method], max_seq_length=4)
    with pytest.raises(TailorError) as info:
        run(recipe)
    assert (info.value.status, info.value.code) == (400, "no_training_targets")
    assert "max_seq_length=4" in info.value.message  # the child's own words, from its error line
    assert not Path(recipe.out_dir).exists()


def test_a_crash_is_a_500_in_tailors_words(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-model"
    recipe = make_recipe(tmp_path, "sft", missing, SFT_ROWS)
    with caplog.at_level(logging.ERROR, logger="tailor.trainer"), pytest.raises(TailorError) as info:
        run(recipe)
    assert (info.value.status, info.value.code) == (500, "training_failed")
    # a client sees Tailor's sentence; the server's paths and the traceback go to the log only
    assert "no-such-model" not in info.value.message and str(tmp_path) not in info.value.message
    assert "Traceback" in caplog.text
    assert not Path(recipe.out_dir).exists()


# --- continuing an adapter ----------------------------------------------------------------


def test_dpo_continues_an_sft_adapter(sft_run: Run, tiny_model_dir: Path, tmp_path: Path) -> None:
    init = Path(sft_run.recipe.out_dir)
    recipe = make_recipe(tmp_path, "dpo", tiny_model_dir, DPO_ROWS, init_adapter_dir=str(init), lora_rank=8)
    r = run(recipe)
    out = Path(recipe.out_dir)
    before = load_file(init / "adapter_model.safetensors")
    after = assert_servable(out, tiny_model_dir, rank=RANK)  # the init adapter's shape, not the recipe's 8
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # that adapter was trained
    # the reference is the SFT adapter as it was, not the bare base: no preference at step 1
    assert r.steps[0].loss == pytest.approx(math.log(2), abs=1e-4)
    assert r.steps[0].metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert bare_base_margin(tiny_model_dir, init) > 1e-3  # ... which the bare base would have shown


def bare_base_margin(base: Path, adapter: Path) -> float:
    """|DPO margin| (beta 0.1) of `adapter` against the bare base model on DPO_ROWS[0].

    ~0.03 for the SFT adapter of `sft_run`: had the run used the bare base as its reference,
    its first loss would be ~0.015 off log 2, 150 times the tolerance asserted above.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.compute.encoding import collate, encode_completion, pad_token_id

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    row = DPO_ROWS[0]
    batch = collate(
        [encode_completion(tok, row["prompt"], row[k], 128) for k in ("chosen", "rejected")],  # type: ignore[misc]
        pad_token_id(tok),
    )

    def logps() -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * mask).sum(-1)

    with torch.no_grad():
        policy = logps()
        with model.disable_adapter():
            ref = logps()
    return abs(0.1 * float((policy[0] - ref[0]) - (policy[1] - ref[1])))


# --- the distributed path -----------------------------------------------------------------


def test_two_cpu_processes_compute_what_one_does(sft_run: Run, tiny_model_dir: Path, tmp_path: Path) -> None:
    """DDP over gloo with 2 processes x 2 examples = 1 process x 4 examples, step for step.

    Same seed, same LoRA init, same data order, same global batch: the gradients differ only
    by the order of float additions (gloo's all-reduce of two half-batch means vs one
    full-batch mean, and torchrun's one thread per process), ~1e-7 relative. So the losses
    must agree to 1e-4, and the adapters to 1e-3 of what the run learned (the norm of the
    B matrices, which start at zero; lr 1e-2, 4 steps): measured ~3e-7 here. The norm, not
    the largest element: Adam divides each update by the gradient's own scale, so an element
    whose gradient happens to be ~0 could flip sign on float noise alone. Any real fault - a
    different batch, a missed all-reduce (each rank learning its own answers), a doubled
    step - puts the adapters 10% or more apart.
    """
    one = sft_run
    two = run(make_recipe(tmp_path, "sft", tiny_model_dir, SFT_ROWS, checkpoint_every=1), devices="cpu:2")
    assert two.recipe.processes == 2 and two.recipe.per_device_batch_size == 2 and not two.recipe.fsdp
    check_run(two, "sft", tiny_model_dir)  # rank 0 alone reports, checkpoints and saves
    assert_learned_alike(one, two)


def test_a_lora_sharded_over_two_cpu_processes_learns_what_one_process_does(
    sft_run: Run, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """FSDP (TAILOR_TRAINER_SHARDING=fsdp): each rank holds half of every layer; checkpoints
    and the result are gathered from both halves before rank 0 saves them."""
    recipe = make_recipe(tmp_path, "sft", tiny_model_dir, SFT_ROWS, checkpoint_every=1)
    two = run(recipe, devices="cpu:2", sharding="fsdp")
    assert two.recipe.fsdp
    check_run(two, "sft", tiny_model_dir)
    assert_learned_alike(sft_run, two)


def assert_learned_alike(one: Run, two: Run) -> None:
    """Same losses step for step, and adapters within 1e-3 of what was learned (see above)."""
    assert two.result.losses == pytest.approx(one.result.losses, abs=1e-4)
    w1 = load_file(Path(one.recipe.out_dir) / "adapter_model.safetensors")
    w2 = load_file(Path(two.recipe.out_dir) / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    learned = torch.cat([w.flatten() for k, w in w1.items() if "lora_B" in k]).norm()  # B starts at zero
    apart = torch.cat([(w1[k] - w2[k]).flatten() for k in w1]).norm()
    assert learned > 0.1
    assert apart <= 1e-3 * learned, (float(apart), float(learned))


def test_full_parameter_runs_are_sharded_on_two_processes_and_learn_what_one_does(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A full-parameter run on several processes is FSDP by default: the saved model (and each
    checkpoint) is whole, loads with transformers, and matches a one-process run's."""
    from transformers import AutoModelForCausalLM

    def full(where: Path, devices: str) -> Run:
        recipe = make_recipe(where, "sft", tiny_model_dir, SFT_ROWS, full_parameters=True, checkpoint_every=2)
        return run(dataclasses.replace(recipe, learning_rate=1e-3), devices=devices)

    one, two = full(tmp_path / "one", "cpu"), full(tmp_path / "two", "cpu:2")
    assert not one.recipe.fsdp and two.recipe.fsdp
    assert two.result.losses == pytest.approx(one.result.losses, abs=1e-4)
    base = load_file(tiny_model_dir / "model.safetensors")
    w1 = load_file(Path(one.recipe.out_dir) / "model.safetensors")
    w2 = load_file(Path(two.recipe.out_dir) / "model.safetensors")
    assert w1.keys() == w2.keys() == base.keys()
    learned = torch.cat([(w1[k] - base[k]).flatten() for k in w1]).norm()
    apart = torch.cat([(w1[k] - w2[k]).flatten() for k in w1]).norm()
    assert learned > 0.01
    assert apart <= 1e-2 * learned, (float(apart), float(learned))
    assert [step for step, _, _ in two.checkpoints] == [2]
    for run_dir in (Path(two.recipe.out_dir), two.checkpoints[0][2]):
        AutoModelForCausalLM.from_pretrained(run_dir)  # whole, not a shard


# --- units of the methods ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("good", "bad", "weights"),
    [
        (3, 1, (1.0, 3.0)),
        (1, 3, (3.0, 1.0)),
        (5, 5, (1.0, 1.0)),
        (2, 7, (3.5, 1.0)),
        (0, 4, (1.0, 1.0)),
        (4, 0, (1.0, 1.0)),
    ],
)
def test_kto_class_weights_balance(good: int, bad: int, weights: tuple[float, float]) -> None:
    from trainer.compute.kto import class_weights

    desirable, undesirable = class_weights(good, bad)
    assert (desirable, undesirable) == pytest.approx(weights)
    if good and bad:
        assert desirable * good == pytest.approx(undesirable * bad)  # the two kinds weigh the same
        assert min(desirable, undesirable) == 1.0  # the larger class keeps weight 1


def test_kto_config_uses_the_data_unless_told(tmp_path: Path) -> None:
    from datasets import Dataset

    from trainer.compute.kto import config_args

    dataset = Dataset.from_list([{"label": label} for label in (True, False, False, False)])
    recipe = make_recipe(tmp_path, "kto", tmp_path, [], batch_size=1)
    args = config_args(recipe, dataset)
    assert (args["desirable_weight"], args["undesirable_weight"]) == (3.0, 1.0)
    assert args["per_device_train_batch_size"] == 2  # KTO's KL pairs examples within a micro-batch
    told = dataclasses.replace(recipe, desirable_weight=1.2, undesirable_weight=0.5)
    assert (config_args(told, dataset)["desirable_weight"], config_args(told, dataset)["undesirable_weight"]) == (
        1.2,
        0.5,
    )


def test_preference_rows_are_validated(tiny_tok: Any, tmp_path: Path) -> None:
    from trainer.compute import dpo, kto

    recipe = make_recipe(tmp_path, "dpo", tmp_path, [])
    with pytest.raises(TailorError, match="identical") as info:
        dpo.build_dataset(tiny_tok, [{"prompt": user(QUESTION), "chosen": "same", "rejected": "same"}], recipe)
    assert info.value.status == 400
    with pytest.raises(TailorError, match="end with a user"):
        dpo.build_dataset(
            tiny_tok, [{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}], recipe
        )
    with pytest.raises(TailorError, match="boolean label"):
        kto.build_dataset(tiny_tok, [{"prompt": user(QUESTION), "completion": "a", "label": "yes"}], recipe)
