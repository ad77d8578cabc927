"""Fine-tuning hyperparameters: every knob a job can set, its default and its range, in one place.

OpenAI's names: `n_epochs`, `batch_size`, `learning_rate_multiplier`, `beta` (preference
and reinforcement methods), and for reinforcement `compute_multiplier`, `eval_interval`,
`eval_samples`, `reasoning_effort`. Tailor's: `lora_rank`, `lora_alpha`, `target_modules`,
`max_seq_length`, `gradient_accumulation_steps`, `packing`, `max_steps`, `early_stopping`,
`quantization`, `finetuning_type` ("lora", or "full": every weight trained, the result a
whole model served on engines of its own), and for reinforcement `group_size` (answers sampled per prompt),
`max_completion_length` and `sampler` (where the answers are sampled: "engine", the worker's vLLM engine with
the step's LoRA loaded; "trainer", TRL's generate in the training process; "auto", the engine where the
worker has one and the run trains a LoRA). A reinforcement job's batch_size counts prompts: each step samples
batch_size * group_size answers.
Every one may be "auto" (or left out); `resolve` turns "auto" into a value for the job's data.
The trainer's compute side (trainer.compute.recipe) takes its defaults from here, so a
default is never named twice. No torch here: the gateway validates jobs with this module.

How long a job trains: with n_epochs and max_steps both "auto", early stopping
(trainer.early_stopping) decides - a validation slice of the training rows, evaluated during
the run, which stops when it no longer improves and keeps the best adapter; n_epochs is then
only the budget. An explicit n_epochs or max_steps trains exactly that long, unless
`early_stopping: true` makes it the budget. Too few rows for a validation slice: the fixed
passes of `fixed_epochs`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import bad_request
from core.states import FinetuningType
from trainer import early_stopping as stopping

AUTO = "auto"
SFT_METHODS = ("supervised", "distillation")
PREFERENCE_METHODS = ("dpo", "kto")
REINFORCEMENT = "reinforcement"  # GRPO against a grader (trainer.compute.grpo)
BETA_METHODS = (*PREFERENCE_METHODS, REINFORCEMENT)  # the ones with a beta (a pull to the reference)
# Early stopping compares validation losses; a reinforcement run has none (its score is the
# grader's, measured on the validation file after training).
EARLY_STOPPING_METHODS = (*SFT_METHODS, *PREFERENCE_METHODS)

# The learning rate that learning_rate_multiplier=1 means, per method. Supervised: the
# usual LoRA rate (~10x full fine-tuning, since only the small update matrices move).
# Preference methods: 4x lower, because their losses push away from a reference and
# overshoot at SFT rates. Reinforcement: the preference rate too; a policy-gradient step on
# a handful of sampled answers is noisier still than a preference pair's.
BASE_LEARNING_RATE = {"supervised": 2e-4, "distillation": 2e-4, "dpo": 5e-5, "kto": 5e-5, REINFORCEMENT: 5e-5}
# Full fine-tuning (every weight moves): the rates the field's full fine-tunes use, SFT's
# 1e-5 (Alpaca, Zephyr's SFT stage 2e-5) and the preference methods' 5e-7 (Zephyr's DPO),
# reinforcement between the two; a LoRA's rates would wreck a whole model in a few steps.
FULL_LEARNING_RATE = {"supervised": 1e-5, "distillation": 1e-5, "dpo": 5e-7, "kto": 5e-7, REINFORCEMENT: 1e-6}
# A smaller distillation student (trainer.distill.student: the base with decoder layers removed,
# every weight trained) is not nudged but healed: its remaining layers no longer fit together and
# it answers nothing sensible untrained, so full fine-tuning's rate leaves it where it started
# (it agreed with its teacher on none of loadtests.bench_distillation's inputs at 1.5x 1e-5).
# Swept with loadtests.bench_student on every-other students of SmolLM2-135M-Instruct (15 of 30
# layers), on generated queue-code, booking-sentence and order-number tasks: at equal length
# 5e-4 learned most (4 codes, 50 steps: held-out exact match 0.08 at 1e-5, 0.29 at 1e-4, 0.62
# at 5e-4; "auto" length 0.67), order numbers 0.92 after 6 epochs, and a spread:6 student learns
# its live test's answers at 1e-3 (README, "Into a smaller student").
STUDENT_LEARNING_RATE = 5e-4
LORA, FULL = FinetuningType.LORA.value, FinetuningType.FULL.value
# Knobs of a LoRA that mean nothing when every weight is trained.
LORA_ONLY = ("lora_rank", "lora_alpha", "target_modules", "quantization")
# Rank 8 teaches facts and style and keeps an adapter a few MB; alpha = 2 * rank is the
# common, well-behaved scale.
DEFAULT_LORA_RANK = 8
# Strength of the pull back towards the reference model: the DPO paper's and TRL's 0.1.
DEFAULT_BETA = 0.1
# Reinforcement (GRPO): the KL penalty's weight, the DeepSeekMath paper's 0.04 (TRL's default
# is 0, no reference at all): it keeps the adapter from drifting into whatever the grader
# happens to reward at the cost of everything else the model could do, for one extra forward
# pass with the LoRA switched off (no second copy of the weights).
DEFAULT_RL_BETA = 0.04
# Answers sampled per prompt: the group whose mean is each answer's baseline. Four already
# gives a spread on most prompts of a small task; a step's cost grows linearly with it.
# OpenAI's compute_multiplier scales it (more exploration per prompt), within [2, 64].
DEFAULT_GROUP_SIZE = 4
MIN_GROUP_SIZE, MAX_GROUP_SIZE = 2, 64
# Longest sampled answer, in tokens: longer ones are cut (and scored as cut). Graded tasks
# are answers and short formats, not essays; every token is generated on each step.
DEFAULT_MAX_COMPLETION_LENGTH = 256
# Where a reinforcement step samples its answers (trainer.worker.sampling decides "auto").
SAMPLER_ENGINE, SAMPLER_TRAINER = "engine", "trainer"
# OpenAI's reasoning_effort: accepted for compatibility and ignored (Tailor's base models do
# not take a reasoning budget); the job says so in a warning event.
REASONING_EFFORTS = ("default", "low", "medium", "high")
# Longest training sequence in tokens; longer examples are cut at the end. Chat answers
# of support and extraction tasks fit well within it, and it matches the engines' default
# context (TAILOR_ENGINE_MAX_MODEL_LEN).
DEFAULT_MAX_SEQ_LENGTH = 2048
# Every Linear layer of a Llama-style block: adapting the MLPs too learns new facts much
# faster than attention alone. "all-linear" (peft) adapts every linear layer of any model.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_LORA_RANK = 64  # used when the caller does not pass the engines' --max-lora-rank
# How the frozen base weights are held while training. "4bit" is QLoRA: NF4 weights with
# bf16 compute through bitsandbytes, about a quarter of the bf16 memory, so a model four
# times larger trains on the same GPU; CUDA only (trainer.compute.placement.check_quantization).
# "auto" is "none": quantizing costs accuracy and speed, and only the operator knows the GPU.
NO_QUANTIZATION, QUANTIZATION_4BIT = "none", "4bit"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")


@dataclass(frozen=True)
class _Rule:
    kind: type  # int, float, bool, str (one of `choices`) or tuple (a list of module names)
    low: float = 0
    high: float = 0
    open_low: bool = False  # the lowest value itself is excluded
    methods: tuple[str, ...] | None = None  # None: every method
    choices: tuple[str, ...] = ()
    unset: Any = AUTO  # what the job stores when the knob is left out or "auto"


RULES: dict[str, _Rule] = {
    "n_epochs": _Rule(int, 1, 50),
    "batch_size": _Rule(int, 1, 256),
    "learning_rate_multiplier": _Rule(float, 0, 100, open_low=True),
    "lora_rank": _Rule(int, 1, MAX_LORA_RANK),
    "lora_alpha": _Rule(int, 1, 10_000),
    "max_steps": _Rule(int, 1, 100_000),
    "beta": _Rule(float, 0, 2, open_low=True, methods=BETA_METHODS),
    "target_modules": _Rule(tuple),
    "max_seq_length": _Rule(int, 16, 131_072),
    "gradient_accumulation_steps": _Rule(int, 1, 64),
    "packing": _Rule(bool, methods=SFT_METHODS),
    "early_stopping": _Rule(bool, methods=EARLY_STOPPING_METHODS),
    "quantization": _Rule(str, choices=(NO_QUANTIZATION, QUANTIZATION_4BIT)),
    "finetuning_type": _Rule(str, choices=(LORA, FULL)),
    # Reinforcement: OpenAI's (FineTuneReinforcementHyperparameters), then Tailor's.
    "compute_multiplier": _Rule(float, 0, 10, open_low=True, methods=(REINFORCEMENT,)),
    "eval_interval": _Rule(int, 1, 100_000, methods=(REINFORCEMENT,)),
    "eval_samples": _Rule(int, 1, 64, methods=(REINFORCEMENT,)),
    "reasoning_effort": _Rule(str, choices=REASONING_EFFORTS, methods=(REINFORCEMENT,), unset="default"),
    "group_size": _Rule(int, MIN_GROUP_SIZE, MAX_GROUP_SIZE, methods=(REINFORCEMENT,)),
    "max_completion_length": _Rule(int, 1, 32_768, methods=(REINFORCEMENT,)),
    "sampler": _Rule(str, choices=(SAMPLER_ENGINE, SAMPLER_TRAINER), methods=(REINFORCEMENT,)),
}


def _check(name: str, rule: _Rule, value: Any, high: float) -> Any:
    param = f"hyperparameters.{name}"
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise bad_request(f'Hyperparameter {name!r} must be true, false or "auto", got {value!r}.', param=param)
        return value
    if rule.kind is str:
        if value not in rule.choices:
            options = ", ".join(f'"{c}"' for c in (*rule.choices, AUTO))
            raise bad_request(f"Hyperparameter {name!r} must be one of {options}, got {value!r}.", param=param)
        return value
    if rule.kind is tuple:
        if value == "all-linear":
            return value
        names = value if isinstance(value, list) and 1 <= len(value) <= 32 else []
        if not names or not all(isinstance(v, str) and _MODULE_NAME.match(v) for v in names):
            raise bad_request(
                f'Hyperparameter {name!r} must be "all-linear" or a list of 1 to 32 module names such as '
                '["q_proj", "v_proj"].',
                param=param,
            )
        return list(value)
    integer = rule.kind is int
    # bool is an int in Python; `true` is never a meaningful epoch count.
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise bad_request(f'Hyperparameter {name!r} must be {kind} or "auto", got {value!r}.', param=param)
    if value < rule.low or (rule.open_low and value == rule.low) or value > high:
        bound = f"greater than {rule.low:g}" if rule.open_low else f"at least {rule.low:g}"
        raise bad_request(f"Hyperparameter {name!r} must be {bound} and at most {high:g}, got {value!r}.", param=param)
    return value


def check_start(model: str, *, whole: bool, full: bool) -> None:
    """A job starting from `model` (a whole model or an adapter) continues it: a full fine-tune
    can only continue a whole model and a LoRA only an adapter, else a 400 on `model`."""
    if whole == full:
        return
    needed = FULL if whole else LORA
    raise bad_request(
        f"{model!r} is {'a whole model' if whole else 'an adapter'}: train from it with finetuning_type "
        f'"{needed}", or train from the base model.',
        code="incompatible_starting_model",
        param="model",
    )


def applies(name: str, method: str) -> bool:
    methods = RULES[name].methods
    return methods is None or method in methods


def validate(
    method: str, hyperparameters: dict[str, Any] | None, *, max_lora_rank: int = MAX_LORA_RANK
) -> dict[str, Any]:
    """Check a job's hyperparameters; return them with every name of the method present ("auto" if unset).

    Refusals are 400s whose `param` names the field (`hyperparameters.n_epochs`).
    """
    out: dict[str, Any] = {}
    for name, value in dict(hyperparameters or {}).items():
        param = f"hyperparameters.{name}"
        rule = RULES.get(name)
        if rule is None:
            raise bad_request(f"Unknown hyperparameter {name!r}; known: {', '.join(RULES)}.", param=param)
        if not applies(name, method):
            only = " and ".join(rule.methods or ())
            raise bad_request(f"Hyperparameter {name!r} applies to the {only} methods only.", param=param)
        if value is None or value == AUTO:
            out[name] = rule.unset
            continue
        out[name] = _check(name, rule, value, max_lora_rank if name == "lora_rank" else rule.high)
    if out.get("finetuning_type") == FULL:
        for name in LORA_ONLY:
            if out.get(name, AUTO) not in (AUTO, NO_QUANTIZATION):
                raise bad_request(
                    f'Hyperparameter {name!r} applies to LoRA fine-tuning only, not finetuning_type "full".',
                    param=f"hyperparameters.{name}",
                )
    for name in RULES:
        if applies(name, method):
            out.setdefault(name, RULES[name].unset)
    return out


@dataclass(frozen=True)
class Resolved:
    """Concrete training knobs for one run ("auto" replaced), as the worker uses them."""

    n_epochs: int  # with early stopping: the budget
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    lora_rank: int
    lora_alpha: int
    max_steps: int | None  # with early stopping: the budget, if given
    beta: float | None
    target_modules: tuple[str, ...] | str
    max_seq_length: int
    gradient_accumulation_steps: int
    packing: bool
    quantization: str = NO_QUANTIZATION
    finetuning_type: str = LORA  # FULL: every weight trained, the run's result a whole model
    # Early stopping: the worker holds back `validation_examples` of the training rows
    # (trainer.early_stopping.split_validation) and tells the run eval_every and patience.
    early_stopping: bool = False
    validation_examples: int = 0
    eval_every: int = 0
    patience: int = 0
    # Reinforcement (trainer.compute.grpo); None for the other methods.
    group_size: int | None = None
    max_completion_length: int | None = None
    # As the job asked ("auto" stays: the worker that runs it decides, trainer.worker.sampling).
    sampler: str | None = None

    train_rows: int = 1  # the rows trained on, after the validation slice (not a knob)

    @property
    def full_parameters(self) -> bool:
        return self.finetuning_type == FULL

    @property
    def budget_steps(self) -> int:
        """Optimizer steps at most, for the rows left to train on."""
        return self.max_steps or self.n_epochs * math.ceil(self.train_rows / self.batch_size)

    def as_dict(self) -> dict[str, Any]:
        # What the job shows once it runs: the knobs' names with "auto" made concrete. Only
        # knob names: the worker stores this as the job's hyperparameters, and a retried job
        # resolves them again to the same values.
        out = {k: v for k, v in asdict(self).items() if k in RULES and v is not None}
        if isinstance(self.target_modules, tuple):
            out["target_modules"] = list(self.target_modules)
        return out

    def describe_length(self) -> str:
        """How long the run trains, in a sentence for the job's events."""
        if self.early_stopping:
            return (
                f"Training up to {self.n_epochs} epoch(s) ({self.budget_steps} steps) on {self.train_rows} examples; "
                f"{self.validation_examples} training examples held back for validation every {self.eval_every} "
                f"steps, stopping after {self.patience} evaluations without improvement and keeping the best adapter"
            )
        length = f"{self.max_steps} steps" if self.max_steps else f"{self.n_epochs} epoch(s)"
        return f"Training {length} on {self.train_rows} examples, without early stopping{self._why_not_stopping()}"

    def _why_not_stopping(self) -> str:
        if self.train_rows < stopping.MIN_ROWS:
            return f" (fewer than {stopping.MIN_ROWS} examples: too few to hold some back for validation)"
        return ""


def fixed_epochs(n_train: int) -> int:
    """Passes without early stopping: tiny datasets need many to be learned at all, large ones few."""
    return min(25, max(3, math.ceil(100 / max(1, n_train))))


def base_learning_rate(method: str, finetuning_type: str, *, student: bool = False) -> float:
    """The learning rate that learning_rate_multiplier=1 means for the run."""
    if student and method == "distillation" and finetuning_type == FULL:
        return STUDENT_LEARNING_RATE
    return (FULL_LEARNING_RATE if finetuning_type == FULL else BASE_LEARNING_RATE)[method]


def resolve(method: str, hyperparameters: dict[str, Any], n_train: int, *, student: bool = False) -> Resolved:
    """Replace "auto" with concrete values for a run on `n_train` training examples.

    n_train counts every training row; with early stopping `validation_examples` of them are
    held back, and the budget is reckoned on the rest. `student`: the run trains a smaller
    distillation student (trainer.distill.student), which has a learning rate of its own.
    """
    hp = validate(method, hyperparameters, max_lora_rank=10_000)

    def pick(name: str, auto: Any) -> Any:
        return auto if hp.get(name, AUTO) == AUTO else hp[name]

    n = max(1, n_train)
    length_given = hp["n_epochs"] != AUTO or hp["max_steps"] != AUTO
    stops_early = applies("early_stopping", method) and pick("early_stopping", not length_given)
    held = stopping.validation_size(n) if stops_early else 0
    fit = n - held
    batch_size = int(pick("batch_size", min(4, fit)))
    max_steps = None if pick("max_steps", None) is None else int(hp["max_steps"])
    n_epochs = int(pick("n_epochs", stopping.budget_epochs(fit) if held else fixed_epochs(n)))
    rank = int(pick("lora_rank", DEFAULT_LORA_RANK))
    multiplier = float(pick("learning_rate_multiplier", 1.0))
    finetuning_type = str(pick("finetuning_type", LORA))
    base_rate = base_learning_rate(method, finetuning_type, student=student)
    modules = pick("target_modules", DEFAULT_TARGET_MODULES)
    budget = max_steps or n_epochs * math.ceil(fit / batch_size)
    return Resolved(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=multiplier,
        learning_rate=multiplier * base_rate,
        lora_rank=rank,
        lora_alpha=int(pick("lora_alpha", 2 * rank)),
        max_steps=max_steps,
        beta=float(pick("beta", DEFAULT_RL_BETA if method == REINFORCEMENT else DEFAULT_BETA))
        if method in BETA_METHODS
        else None,
        target_modules=modules if isinstance(modules, str) else tuple(modules),
        max_seq_length=int(pick("max_seq_length", DEFAULT_MAX_SEQ_LENGTH)),
        gradient_accumulation_steps=int(pick("gradient_accumulation_steps", 1)),
        packing=bool(pick("packing", False)) if method in SFT_METHODS else False,
        quantization=str(pick("quantization", NO_QUANTIZATION)),
        finetuning_type=finetuning_type,
        early_stopping=held > 0,
        validation_examples=held,
        eval_every=stopping.eval_every(fit, batch_size, budget) if held else 0,
        patience=stopping.PATIENCE if held else 0,
        train_rows=fit,
        group_size=int(pick("group_size", group_size(hp.get("compute_multiplier", AUTO))))
        if method == REINFORCEMENT
        else None,
        max_completion_length=int(pick("max_completion_length", DEFAULT_MAX_COMPLETION_LENGTH))
        if method == REINFORCEMENT
        else None,
        sampler=str(hp.get("sampler", AUTO)) if method == REINFORCEMENT else None,
    )


def group_size(compute_multiplier: Any) -> int:
    """Answers sampled per prompt for OpenAI's compute_multiplier ("auto": 1)."""
    scale = 1.0 if compute_multiplier == AUTO else float(compute_multiplier)
    return min(MAX_GROUP_SIZE, max(MIN_GROUP_SIZE, round(DEFAULT_GROUP_SIZE * scale)))


# OpenAI's reinforcement knobs Tailor accepts and does not act on: evaluation during training
# (Tailor evaluates the result on the validation file, with the grader, before its gates)
# and the reasoning budget.
IGNORED = ("eval_interval", "eval_samples", "reasoning_effort")


def ignored(hyperparameters: dict[str, Any]) -> list[str]:
    """The knobs of IGNORED a job set to something other than "auto" or "default"."""
    return [k for k in IGNORED if hyperparameters.get(k, AUTO) not in (AUTO, "default")]
