"""Trainer benchmark: what a training run costs and achieves, through the trainer Tailor ships.

Two modes, one script:

    python -m loadtests.bench_trainer
        On this machine's CPU: the ticket-routing task of bench_adaptation (loadtests.ticket_routing),
        LoRA SFT on the real base model through trainer.compute (TRL, in its own process), then
        the job's evaluation (adapter against the base model on unseen tickets) on a vLLM engine
        as the worker runs it (trainer.compute.evaluation), and the same evaluation the way the
        trainer did it before, with transformers' `generate` on a float32 copy of the model
        (batches of 8, 64 new tokens, one more forward pass per batch for the perplexity).
        Prints wall time, steps, tokens/s, exact match before and after, both evaluation times.
        With --old-checkout DIR (a checkout of Tailor from before the trainer moved to TRL, such
        as `git worktree add DIR decbb0a`), the same rows, steps and batch size are also trained
        by that checkout's hand-written loop (`python -m trainer.sft` there, same interpreter)
        and its adapter is scored on the same engine: wall time and exact match side by side.

    python -m loadtests.bench_trainer --device cuda --model-config llama-1b [--processes N]
        A randomly initialised ~1B Llama built from a config (trainer.compute.synthetic: no
        weights needed), synthetic chat data of --seq-len tokens, LoRA and full-parameter runs of
        --steps optimizer steps in bf16 on N GPUs (`accelerate launch` for N > 1). Prints
        tokens/s, model FLOPs utilisation and peak GPU memory per run. Needs only torch,
        transformers, peft, accelerate and trl (plus datasets), not vLLM.

MFU counts model FLOPs per trained token as 6N for full-parameter training (forward 2N,
backward 4N) and 4N for LoRA (the frozen weights get no weight gradients: forward 2N, input
gradients 2N), plus the attention term 12 * layers * hidden * seq_len (PaLM's appendix B),
against the card's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s, A100: 312).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.recipes import recipe_in, write_rows
from trainer.compute import synthetic
from trainer.compute.launch import run_training
from trainer.compute.placement import parse_devices
from trainer.compute.recipe import Recipe, TrainResult

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


@dataclass
class Figures:
    name: str
    steps: int
    seconds: float
    train_seconds: float
    tokens: int
    tokens_per_s: float
    mfu: float | None
    peak_memory_gib: float


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def flops_per_token(n_params: int, layers: int, hidden: int, seq_len: int, *, full: bool) -> float:
    return (6 if full else 4) * n_params + 12 * layers * hidden * seq_len


def synthetic_rows(n: int, seq_len: int, seed: int = 0) -> list[dict[str, object]]:
    """Chats of about seq_len tokens, half prompt, half answer (a few words = a few tokens)."""
    vocab = synthetic.words(5000, seed)
    import random

    rng = random.Random(seed)
    half = max(1, seq_len // 4)  # ~2 tokens per pseudo-word
    return [
        {
            "messages": [
                {"role": "user", "content": " ".join(rng.choice(vocab) for _ in range(half))},
                {"role": "assistant", "content": " ".join(rng.choice(vocab) for _ in range(half))},
            ]
        }
        for _ in range(n)
    ]


def sft_recipe(
    model_dir: Path, rows: list[dict[str, object]], work: Path, args: argparse.Namespace, **knobs: object
) -> Recipe:
    """An SFT recipe on `rows` (written to work/data.jsonl), saving to work/out."""
    work.mkdir(parents=True, exist_ok=True)
    data = write_rows(work / "data.jsonl", rows)
    return recipe_in(work, "sft", model_dir, data, "out", max_steps=args.steps, batch_size=args.batch_size, **knobs)


def run_one(
    name: str, model_dir: Path, rows: list[dict[str, object]], args: argparse.Namespace, *, full: bool, work: Path
) -> TrainResult:
    gpus = ",".join(str(i) for i in range(args.processes))
    spec = f"cpu:{args.processes}" if args.device == "cpu" else f"cuda:{gpus}"
    placement = parse_devices(spec, visible_gpus=_visible_gpus(), bf16=True)
    # run_training fills in the placement; the learning rate is the usual one per kind.
    recipe = sft_recipe(
        model_dir, rows, work, args, max_seq_length=args.seq_len, learning_rate=1e-5 if full else 2e-4,
        full_parameters=full,
    )  # fmt: skip
    shape = f"{args.steps} steps of {args.batch_size} x {args.seq_len} tokens"
    print(f"{name}: {placement.describe()}, {shape}", flush=True)
    return run_training(recipe, placement, work / "run")


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def model_stats(model_dir: Path) -> tuple[int, int, int]:
    """(parameters, layers, hidden size) from the saved config and weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    h, i, layers, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    embeddings = v * h * (1 if config.tie_word_embeddings else 2)
    return layers * per_layer + embeddings, layers, h


def figures(
    name: str, result: TrainResult, stats: tuple[int, int, int], args: argparse.Namespace, full: bool
) -> Figures:
    n_params, layers, hidden = stats
    seconds = result.train_seconds or result.seconds
    tokens_per_s = result.trained_tokens / seconds if seconds else 0.0
    mfu = None
    if args.device == "cuda":
        import torch

        peak = peak_tflops(torch.cuda.get_device_name(0))
        if peak:
            achieved = tokens_per_s * flops_per_token(n_params, layers, hidden, args.seq_len, full=full)
            mfu = achieved / (peak * 1e12 * args.processes)
    return Figures(
        name=name,
        steps=result.steps,
        seconds=round(result.seconds, 1),
        train_seconds=round(seconds, 1),
        tokens=result.trained_tokens,
        tokens_per_s=round(tokens_per_s, 1),
        mfu=None if mfu is None else round(mfu, 3),
        peak_memory_gib=round(result.peak_memory_bytes / 2**30, 2),
    )


def speed(args: argparse.Namespace) -> list[Figures]:
    out: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="tailor-bench-trainer-") as tmp:
        model_dir = synthetic.build(Path(tmp) / "model", args.model_config)
        stats = model_stats(model_dir)
        print(f"model {args.model_config}: {stats[0] / 1e9:.2f} B parameters (random weights)", flush=True)
        rows = synthetic_rows(max(64, args.steps * args.batch_size), args.seq_len)
        for name, full in (("lora", False), ("full", True)):
            if name not in args.runs:
                continue
            result = run_one(name, model_dir, rows, args, full=full, work=Path(tmp) / name)
            out.append(figures(name, result, stats, args, full))
            print(json.dumps(out[-1].__dict__), flush=True)
    return out


def routing(args: argparse.Namespace) -> dict[str, object]:
    """The adaptation benchmark's task, trained through the shipped trainer, scored before and after."""
    from loadtests import ticket_routing as task
    from trainer.evaluate import EvalExample

    model_dir = Path(args.model_dir)
    train = task.tickets(per_queue=args.per_queue, seed=0)
    seen = {t.text for t in train}
    # Both evaluation paths are timed on the same set of tickets (every opening and detail of
    # each queue, so it has the size of a real held-out set); exact match is reported on the
    # ones the adapter never saw.
    evaluated = task.tickets(per_queue=args.eval_per_queue, seed=1)
    unseen = [i for i, t in enumerate(evaluated) if t.text not in seen]
    heldout = [evaluated[i] for i in unseen]
    examples = [EvalExample(t.messages(), t.queue) for t in evaluated]
    with tempfile.TemporaryDirectory(prefix="tailor-bench-trainer-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        rows = [{"messages": [*t.messages(), {"role": "assistant", "content": t.queue}]} for t in train]
        recipe = sft_recipe(model_dir, rows, work, args)
        result = run_training(recipe, parse_devices(f"cpu:{args.processes}", visible_gpus=0, bf16=False), work / "run")
        wall = time.monotonic() - started
        adapter = Path(recipe.out_dir)
        old = train_with_old_loop(Path(args.old_checkout), model_dir, work, args) if args.old_checkout else None
        adapters = {"candidate": adapter, **({"old": old[1]} if old else {})}
        engine_start, engine_eval, answers = evaluate_on_engine(model_dir, adapters, examples, work)
        generate_eval = evaluate_with_generate(model_dir, adapter, examples)
    comparison = {}
    if old:
        comparison = {
            "old_loop_run_seconds": round(old[0], 1),
            "run_time_new_over_old": round(wall / old[0], 2),
            "old_loop_exact_match_after": round(task.accuracy([answers["old"][i] for i in unseen], heldout), 3),
        }
    return {
        "task": "ticket routing",
        "train_examples": len(train),
        "heldout": len(heldout),
        "evaluated": len(examples),
        "processes": args.processes,
        "steps": result.steps,
        "run_seconds": round(wall, 1),
        "train_seconds": round(result.train_seconds, 1),
        "tokens_per_s": round(result.trained_tokens / result.train_seconds, 1) if result.train_seconds else None,
        "exact_match_before": round(task.accuracy([answers["baseline"][i] for i in unseen], heldout), 3),
        "exact_match_after": round(task.accuracy([answers["candidate"][i] for i in unseen], heldout), 3),
        "eval_engine_start_seconds": round(engine_start, 1),
        "eval_seconds_vllm": round(engine_eval, 1),
        "eval_seconds_generate": round(generate_eval, 1),
        "eval_speedup": round(generate_eval / engine_eval, 1),
        **comparison,
    }


def train_with_old_loop(checkout: Path, model_dir: Path, work: Path, args: argparse.Namespace) -> tuple[float, Path]:
    """(wall seconds, adapter dir): the same data, steps and batch through the checkout's `trainer.sft`."""
    import subprocess
    import sys

    out = work / "old-adapter"
    command = [sys.executable, "-m", "trainer.sft", "--base", str(model_dir), "--data", str(work / "data.jsonl")]
    command += ["--out", str(out), "--max-steps", str(args.steps), "--batch-size", str(args.batch_size)]
    started = time.monotonic()
    subprocess.run(command, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started, out


def evaluate_on_engine(
    model_dir: Path, adapters: dict[str, Path], examples: list[Any], work: Path
) -> tuple[float, float, dict[str, list[str]]]:
    """(engine start s, seconds of the first evaluation, answers per side): the worker's evaluation.

    Each adapter of `adapters` is scored against the base model on one engine; the answers
    are keyed by the adapter's name, the base model's by "baseline".
    """
    from transformers import AutoTokenizer

    from core.config import Settings
    from trainer.compute.engine import OwnEngine
    from trainer.compute.evaluation import evaluate

    settings = Settings(data_dir=work / "engine", base_model_path=model_dir, engine_kv_cache_gib=1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    started = time.monotonic()
    own = OwnEngine(settings)
    client = own.start()
    try:
        ready = time.monotonic()
        answers: dict[str, list[str]] = {}
        seconds = 0.0
        for name, adapter in adapters.items():
            began = time.monotonic()
            comparison, _ = evaluate(
                client,
                tokenizer,
                examples,
                candidate_dir=adapter,
                baseline_dir=None,
                tag=f"bench-{name}",
                max_model_len=settings.engine_max_model_len,
            )
            seconds = seconds or time.monotonic() - began
            answers[name] = [r.candidate_output for r in comparison.examples]
            answers["baseline"] = [r.baseline_output for r in comparison.examples]
    finally:
        client.close()
        own.stop()
    return ready - started, seconds, answers


def evaluate_with_generate(model_dir: Path, adapter: Path, examples: list[Any]) -> float:
    """Seconds for the same evaluation as the trainer ran it before it used an engine.

    Both sides from one float32 copy of the model with the adapter (switched off for the
    base), left-padded batches of 8, greedy, 64 new tokens; the references' perplexity from
    one more forward pass per batch. Model loading is not counted.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.compute.encoding import collate, encode_completion, pad_token_id, render

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter)
    model.eval()
    pad = pad_token_id(tokenizer)
    prompts = [render(tokenizer, e.messages, add_generation_prompt=True) for e in examples]
    encoded = [x for e in examples if (x := encode_completion(tokenizer, e.messages, e.reference, 2048))]
    started = time.monotonic()
    with torch.no_grad():
        for side in ("candidate", "baseline"):
            context = model.disable_adapter() if side == "baseline" else contextlib.nullcontext()
            with context:
                for i in range(0, len(prompts), 8):
                    batch = prompts[i : i + 8]
                    width = max(len(p) for p in batch)
                    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
                    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
                    model.generate(
                        input_ids=ids, attention_mask=mask, max_new_tokens=64, do_sample=False, pad_token_id=pad
                    )
                for i in range(0, len(encoded), 8):
                    batch_inputs = collate(encoded[i : i + 8], pad)
                    model(**batch_inputs)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="cuda: the speed run on a random model")
    p.add_argument("--model-config", choices=sorted(synthetic.CONFIGS), default="llama-1b")
    p.add_argument("--model-dir", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"), help="CPU routing run")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--per-queue", type=int, default=15, help="CPU routing run: training tickets per queue")
    p.add_argument("--steps", type=int, default=None, help="default: 200 on GPUs, 60 for the CPU routing run")
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on GPUs, 4 on the CPU")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--runs", default="lora,full", help="speed runs: lora, full or both")
    p.add_argument("--eval-per-queue", type=int, default=25, help="CPU routing run: evaluated tickets per queue")
    p.add_argument("--old-checkout", default=None, help="CPU routing run: also train with this checkout's old loop")
    args = p.parse_args(argv)
    if args.device is None:
        args.steps, args.batch_size = args.steps or 60, args.batch_size or 4
        print(json.dumps(routing(args), indent=1))
        return 0
    args.steps, args.batch_size = args.steps or 200, args.batch_size or 8
    rows = speed(args)
    print("\n| run | steps | tokens/s | MFU | peak memory GiB | train s |\n|---|--:|--:|--:|--:|--:|")
    for f in rows:
        mfu = "-" if f.mfu is None else f"{f.mfu:.1%}"
        print(f"| {f.name} | {f.steps} | {f.tokens_per_s:,.0f} | {mfu} | {f.peak_memory_gib} | {f.train_seconds} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
