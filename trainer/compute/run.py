"""One training run, in this process (one rank of it, when distributed), top to bottom.

    recipe = Recipe.load(path)
    rows -> the method's dataset (trainer.compute.sft / dpo / kto)
    base model in the placement's precision, LoRA on top (fresh, or continuing an adapter)
    the method's TRL trainer with Tailor's callbacks -> train()
    rank 0 saves the adapter atomically and writes the result line

The worker never calls this directly: it launches `python -m trainer.compute.launch`, so a
run's memory is returned when it ends and several processes can share one job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from core.errors import bad_request, conflict
from trainer.compute import dpo, kto, sft
from trainer.compute.callbacks import JobCallback, is_main_process, save_atomically
from trainer.compute.recipe import Recipe, TrainingCancelled, TrainResult

METHODS: dict[str, ModuleType] = {"sft": sft, "dpo": dpo, "kto": kto}
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_model(recipe: Recipe) -> Any:
    """The base model in the recipe's precision with trainable LoRA matrices."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(recipe.seed)  # before the LoRA is created: seeds its init too
    # Frozen base weights in the compute precision; weights that are trained stay float32
    # (the trainer autocasts): AdamW updates in bf16 lose small steps to rounding.
    dtype = "float32" if recipe.full_parameters else _DTYPES[recipe.precision]
    model = AutoModelForCausalLM.from_pretrained(recipe.base_model_dir, dtype=getattr(torch, dtype))
    model.config.use_cache = False  # no KV cache in training: saves memory
    if recipe.full_parameters:
        return model
    if recipe.init_adapter_dir is not None:
        return PeftModel.from_pretrained(model, recipe.init_adapter_dir, is_trainable=True)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.target_modules if isinstance(recipe.target_modules, str) else list(recipe.target_modules),
    )
    return get_peft_model(model, lora)


def common_args(recipe: Recipe, work_dir: Path) -> dict[str, Any]:
    """transformers.TrainingArguments every method shares, from the recipe."""
    return {
        "output_dir": str(work_dir),
        "per_device_train_batch_size": recipe.per_device_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        "learning_rate": recipe.learning_rate,
        "num_train_epochs": recipe.epochs,
        "max_steps": recipe.max_steps if recipe.max_steps is not None else -1,
        "lr_scheduler_type": "linear",
        "warmup_steps": recipe.warmup_ratio,  # a float below 1 is a ratio of the steps
        "weight_decay": recipe.weight_decay,
        "max_grad_norm": recipe.max_grad_norm,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "bf16": recipe.precision == "bf16",
        "fp16": recipe.precision == "fp16",
        "use_cpu": recipe.device == "cpu",
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "logging_steps": 1,
        "save_strategy": "no",  # checkpoints are Tailor's (callbacks), adapters only
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
    }


def _nothing_to_learn(n_rows: int, recipe: Recipe) -> Exception:
    return bad_request(
        f"none of the {n_rows} examples has anything to learn within max_seq_length={recipe.max_seq_length}",
        code="no_training_targets",
    )


def train(recipe: Recipe) -> TrainResult:
    started = time.monotonic()
    from transformers import AutoTokenizer, PrinterCallback

    out_dir = Path(recipe.out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise conflict(f"{out_dir} already exists; refusing to overwrite an adapter")
    method = METHODS[recipe.method]
    tokenizer = AutoTokenizer.from_pretrained(recipe.base_model_dir)
    rows = read_rows(Path(recipe.data_path))
    dataset, dropped = method.build_dataset(tokenizer, rows, recipe)
    if len(dataset) == 0:
        raise _nothing_to_learn(len(rows), recipe)
    model = load_model(recipe)
    scratch = Path(recipe.progress_path).parent / "trl"  # TRL's output_dir: the run's work dir, not the adapters'
    args = method.Config(**{**common_args(recipe, scratch), **method.config_args(recipe, dataset)})
    trainer: Any = None
    callback = JobCallback(recipe, lambda: trainer.accelerator.unwrap_model(trainer.model))
    trainer = method.Trainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[callback]
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to the progress file, not stdout
    used = len(trainer.train_dataset)
    dropped += len(dataset) - used  # rows TRL dropped because truncation left no answer
    if used == 0:
        raise _nothing_to_learn(len(rows), recipe)
    trainer.train()
    if callback.cancelled:
        raise TrainingCancelled(trainer.state.global_step)
    if is_main_process():
        save_atomically(trainer.accelerator.unwrap_model(trainer.model), out_dir)
    return TrainResult(
        steps=trainer.state.global_step,
        final_loss=callback.losses[-1] if callback.losses else float("nan"),
        losses=callback.losses,
        out_dir=out_dir,
        seconds=time.monotonic() - started,
        examples_used=used,
        examples_dropped=dropped,
        trained_tokens=callback.tokens,
        train_seconds=callback.train_seconds,
        peak_memory_bytes=_peak_memory(recipe),
    )


def _peak_memory(recipe: Recipe) -> int:
    if recipe.device != "cuda":
        return 0
    import torch

    return int(torch.cuda.max_memory_allocated())
