"""One training run, in this process (one rank of it, when distributed), top to bottom.

    recipe = Recipe.load(path)
    rows -> the method's dataset (trainer.compute.sft / dpo / kto / grpo)
    base model in the placement's precision, LoRA on top (fresh, or continuing an adapter)
    the method's TRL trainer with Tailor's callbacks -> train()
        (with validation rows: evaluated every eval_every steps, stopped early, best adapter kept)
    rank 0 saves the adapter atomically and writes the result line

The worker never calls this directly: it launches `python -m trainer.compute.launch`, so a
run's memory is returned when it ends and several processes can share one job.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from transformers import EarlyStoppingCallback

from core.errors import bad_request, conflict
from trainer.compute import dpo, grpo, kto, sft
from trainer.compute.callbacks import ANSWER_SCORE, BestAdapter, JobCallback, Selection
from trainer.compute.placement import Placement, check_quantization
from trainer.compute.recipe import (
    STOP_BUDGET,
    STOP_NO_IMPROVEMENT,
    Recipe,
    TrainingCancelled,
    TrainingPaused,
    TrainResult,
)
from trainer.compute.weights import Weights
from trainer.hyperparameters import NO_QUANTIZATION

METHODS: dict[str, ModuleType] = {"sft": sft, "dpo": dpo, "kto": kto, "grpo": grpo}
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_model(recipe: Recipe) -> Any:
    """The base model in the recipe's precision (or 4-bit) with trainable LoRA matrices."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    check_quantization(recipe.quantization, placement_of(recipe), full_parameters=recipe.full_parameters)
    torch.manual_seed(recipe.seed)  # before the LoRA is created: seeds its init too
    # Frozen base weights in the compute precision; weights that are trained stay float32
    # (the trainer autocasts): AdamW updates in bf16 lose small steps to rounding.
    dtype = "float32" if recipe.full_parameters else _DTYPES[recipe.precision]
    model = AutoModelForCausalLM.from_pretrained(
        recipe.base_model_dir, dtype=getattr(torch, dtype), **quantized_loading(recipe)
    )
    model.config.use_cache = False  # no KV cache in training: saves memory
    if recipe.full_parameters:
        return model
    if recipe.quantization != NO_QUANTIZATION:
        from peft import prepare_model_for_kbit_training

        # Norms and embeddings to float32, inputs that require gradients (checkpointing needs them)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
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


def placement_of(recipe: Recipe) -> Placement:
    """The placement the recipe was told (run_training fills it in)."""
    return Placement(recipe.device, recipe.processes, recipe.precision, recipe.gradient_checkpointing)


def quantized_loading(recipe: Recipe) -> dict[str, Any]:
    """from_pretrained's extra arguments for QLoRA: NF4 weights, double quantization, 16-bit compute."""
    if recipe.quantization == NO_QUANTIZATION:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # the QLoRA paper's data type for normally distributed weights
        bnb_4bit_use_double_quant=True,  # quantizes the quantization constants too: ~0.4 bit/weight less
        # bf16 where the GPU has it; fp16 GPUs (V100, T4) compute in fp16
        bnb_4bit_compute_dtype=torch.bfloat16 if recipe.precision == "bf16" else torch.float16,
    )
    # each process loads its quantized copy straight onto its own GPU
    return {"quantization_config": config, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


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
        # FSDP checkpoints activations itself (sharding_args); both at once is refused
        "gradient_checkpointing": recipe.gradient_checkpointing and not recipe.fsdp,
        "logging_steps": 1,
        "save_strategy": "no",  # checkpoints are Tailor's (callbacks), adapters only
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
    }


def sharding_args(recipe: Recipe, model: Any) -> dict[str, Any]:
    """TrainingArguments for an FSDP2 run (trainer.compute.placement); none for DDP or one process.

    Each decoder layer is its own shard unit (the model's `_no_split_modules`, e.g.
    LlamaDecoderLayer): its weights are gathered just before the layer runs and freed after
    (`reshard_after_forward`), so a rank holds one layer's full weights at a time.
    """
    if not recipe.fsdp:
        return {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = list(getattr(base, "_no_split_modules", None) or [])
    if not layers:
        name = type(base).__name__
        raise bad_request(f"{name} does not name its layers for sharding; use TAILOR_TRAINER_SHARDING=ddp")
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "version": 2,
            "transformer_layer_cls_to_wrap": layers,
            "reshard_after_forward": True,
            "activation_checkpointing": recipe.gradient_checkpointing,
            "state_dict_type": "FULL_STATE_DICT",
        },
    }


def evaluation_args(recipe: Recipe, selection: Selection | None) -> dict[str, Any]:
    """TrainingArguments for evaluating on the validation rows; none without them."""
    if selection is None:
        return {}
    return {
        "eval_strategy": "steps",
        "eval_steps": recipe.eval_every,
        # No gradients or optimizer state while evaluating: twice the training micro-batch fits.
        "per_device_eval_batch_size": 2 * max(2, recipe.per_device_batch_size),
        "prediction_loss_only": True,  # the scores come from TRL's metrics; logits would cost a second forward
        **selection.training_args(),
    }


def selection_for(recipe: Recipe, eval_dataset: Any) -> Selection | None:
    """What decides the best adapter (trainer.compute.callbacks); None: no validation rows, no early stopping."""
    if eval_dataset is None:
        return None
    if recipe.method == "sft" and sft.short_answers(eval_dataset):
        return Selection(ANSWER_SCORE, greater_is_better=True)
    return Selection("loss", greater_is_better=False)


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
    eval_dataset = _validation_dataset(method, tokenizer, recipe)
    selection = selection_for(recipe, eval_dataset)
    model = load_model(recipe)
    scratch = Path(recipe.progress_path).parent / "trl"  # TRL's output_dir: the run's work dir, not the adapters'
    # later dicts win: a method may override a common argument (KTO its batch size)
    args = method.Config(
        **{
            **common_args(recipe, scratch),
            **method.config_args(recipe, dataset),
            **evaluation_args(recipe, selection),
            **sharding_args(recipe, model),
        }
    )
    trainer: Any = None
    weights = Weights(lambda: trainer, sharded=recipe.fsdp, tokenizer=tokenizer)
    callback = JobCallback(recipe, weights)
    best = _best_adapter(recipe, selection, weights)
    # a method's own arguments (GRPO: its reward, the engine rollout and its callback)
    own = method.trainer_args(recipe) if hasattr(method, "trainer_args") else {}
    trainer = method.Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[callback, *_early_stopping(best), *own.pop("callbacks", [])],
        **own,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to the progress file, not stdout
    used = len(trainer.train_dataset)
    dropped += len(dataset) - used  # rows TRL dropped because truncation left no answer
    if used == 0:
        raise _nothing_to_learn(len(rows), recipe)
    trainer.train()
    if callback.cancelled:
        raise TrainingCancelled(callback.step(trainer.state))
    if callback.paused:  # its checkpoint is saved and reported (JobCallback.on_log)
        raise TrainingPaused(
            callback.step(trainer.state), callback.total_steps(trainer.state), callback.losses, callback.tokens
        )
    weights.save(out_dir, best.best if best is not None else None)
    return TrainResult(
        steps=callback.step(trainer.state),
        final_loss=callback.losses[-1] if callback.losses else float("nan"),
        losses=callback.losses,
        out_dir=out_dir,
        seconds=time.monotonic() - started,
        examples_used=used,
        examples_dropped=dropped,
        trained_tokens=callback.tokens,
        train_seconds=callback.train_seconds,
        peak_memory_bytes=_peak_memory(recipe),
        **_selection_result(best, eval_dataset),
    )


def _validation_dataset(method: ModuleType, tokenizer: Any, recipe: Recipe) -> Any:
    """The validation rows as the method's dataset; None without them (or with none left)."""
    if recipe.eval_data_path is None:
        return None
    dataset, _ = method.build_dataset(tokenizer, read_rows(Path(recipe.eval_data_path)), recipe)
    return dataset if len(dataset) else None


def _best_adapter(recipe: Recipe, selection: Selection | None, weights: Weights) -> BestAdapter | None:
    if selection is None:
        return None
    # patience 0: evaluate and keep the best, never stop early
    early = EarlyStoppingCallback(recipe.patience, selection.threshold) if recipe.patience > 0 else None
    return BestAdapter(recipe, selection, weights, early)


def _early_stopping(best: BestAdapter | None) -> list[Any]:
    """The callbacks of early stopping in the order they must run on each evaluation: the
    selection adds its derived metric, the stopper counts, the keeper reads that count."""
    if best is None:
        return []
    return [c for c in (best.selection, best.early_stopping, best) if c is not None]


def _selection_result(best: BestAdapter | None, eval_dataset: Any) -> dict[str, Any]:
    if best is None:
        return {}
    return {
        "stop_reason": STOP_NO_IMPROVEMENT if best.stopped_early else STOP_BUDGET,
        "best_step": best.best_step,
        "selection_metric": best.selection.reported,
        "best_metrics": best.best_metrics,
        "evaluations": best.evaluations,
        "validation_examples": len(eval_dataset),
    }


def _peak_memory(recipe: Recipe) -> int:
    if recipe.device != "cuda":
        return 0
    import torch

    return int(torch.cuda.max_memory_allocated())
