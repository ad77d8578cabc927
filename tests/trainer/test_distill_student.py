"""A smaller distillation student (trainer.distill.student): its spec, checked before any file
is touched, abused as tenant input; derived from a tiny Llama and trained whole for a few
steps; and the worker's step that derives it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from adapters.model_validation import validate_model_dir
from core.config import Settings
from core.errors import TailorError
from tests.trainer.compute.runs import make_recipe, run
from tests.trainer.tiny_models import save_tiny_llama, tiny_tokenizer
from trainer import distill, hyperparameters
from trainer.distill import DistillSpec, StudentSpec
from trainer.distill.student import PARAM, kept_layers
from trainer.jobs import JobInfo
from trainer.worker.distillation import resolve_hyperparameters, student_model

LAYERS = 6
QUESTION, ANSWER = "What is the capital of France?", "Zorblax is the capital of France."
ROWS = [{"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose base model is a config of LAYERS layers (the spec reads nothing else)."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": LAYERS}))
    return Settings(data_dir=tmp_path / "data", base_model_path=base)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok: PreTrainedTokenizerBase = tiny_tokenizer([QUESTION, ANSWER, "system user assistant"])
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-teacher"), tok)


def parse(settings: Settings, student: Any) -> DistillSpec:
    return distill.parse_spec({"student": student}, settings)


# --- the spec ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "kept"),
    [("every-other", (0, 2, 5)), ("first:2", (0, 1)), ("spread:3", (0, 3, 5)), ("0,4", (0, 4)), ([1, 3, 5], (1, 3, 5))],
)
def test_a_student_is_a_subset_of_the_base_models_layers(
    settings: Settings, layers: Any, kept: tuple[int, ...]
) -> None:
    # A student alone is enough: the base teaches a smaller model of itself, no context needed.
    spec = parse(settings, {"layers": layers})
    assert spec.student is not None
    assert kept_layers(spec.student, settings.base_model_path) == kept
    again = DistillSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again.student == spec.student
    assert spec.public()["student"] == {"layers": layers}


def test_without_a_student_the_job_trains_an_adapter_as_before(settings: Settings) -> None:
    spec = distill.parse_spec({"system": "Be terse."}, settings)
    assert spec.student is None and "student" not in spec.to_json() and "student" not in spec.public()
    assert DistillSpec.from_json({"system": "Be terse."}).student is None
    with pytest.raises(TailorError) as e:
        distill.parse_spec({}, settings)
    assert e.value.param == "method.distillation"


@pytest.mark.parametrize(
    ("student", "param"),
    [
        ("every-other", PARAM),
        ([0, 2], PARAM),
        ({}, f"{PARAM}.layers"),
        ({"layers": None}, f"{PARAM}.layers"),
        ({"layers": "every-other", "path": "/tmp/x"}, f"{PARAM}.path"),
        ({"layers": ""}, f"{PARAM}.layers"),
        ({"layers": []}, f"{PARAM}.layers"),
        ({"layers": "half"}, f"{PARAM}.layers"),
        ({"layers": "first:0"}, f"{PARAM}.layers"),
        ({"layers": f"first:{LAYERS + 1}"}, f"{PARAM}.layers"),
        ({"layers": [0, LAYERS]}, f"{PARAM}.layers"),
        ({"layers": [-1, 2]}, f"{PARAM}.layers"),
        ({"layers": [3, 1]}, f"{PARAM}.layers"),
        ({"layers": [1, 1]}, f"{PARAM}.layers"),
        ({"layers": [True, 2]}, f"{PARAM}.layers"),
        ({"layers": ["1", "2"]}, f"{PARAM}.layers"),
        ({"layers": [[0], [1]]}, f"{PARAM}.layers"),
        ({"layers": 3}, f"{PARAM}.layers"),
        ({"layers": {"every-other": True}}, f"{PARAM}.layers"),
    ],
)
def test_bad_students_are_400s_naming_the_field(settings: Settings, student: Any, param: str) -> None:
    with pytest.raises(TailorError) as e:
        parse(settings, student)
    assert (e.value.status, e.value.param) == (400, param), e.value.message


@pytest.mark.parametrize(
    "layers",
    [
        "../../../etc/passwd",
        "every-other/../../x",
        "/etc/passwd",
        "0,2,../../x",
        "every-other\x00",
        "first:2;rm -rf /",
        "spread:3\n/tmp",
        "~root",
        "0" * 10_000,
        "9" * 400,
        "first:" + "9" * 5000,
        list(range(10_000)),
    ],
)
def test_a_layer_spec_is_never_a_path(settings: Settings, tmp_path: Path, layers: Any) -> None:
    """The spec is tenant input: anything but the layer forms is refused before any file is
    touched, and a student is only ever written where the worker says (derive_student's `out`)."""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(TailorError) as e:
        parse(settings, {"layers": layers})
    assert (e.value.status, e.value.param) == (400, f"{PARAM}.layers")
    # Nor can a stored spec queued before a check was tightened reach the file system.
    with pytest.raises(TailorError):
        distill.derive_student(StudentSpec.from_json({"layers": layers}), settings.base_model_path, tmp_path / "out")  # type: ignore[arg-type]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_student_trains_whole() -> None:
    assert distill.student_hyperparameters({"n_epochs": 2}) == {"n_epochs": 2, "finetuning_type": "full"}
    assert distill.student_hyperparameters({"finetuning_type": "full"})["finetuning_type"] == "full"
    with pytest.raises(TailorError) as e:
        distill.student_hyperparameters({"finetuning_type": "lora"})
    assert e.value.param == "hyperparameters.finetuning_type"


# --- derived and trained ----------------------------------------------------------


def test_a_derived_student_trains_every_weight_into_a_servable_whole_model(tiny_dir: Path, tmp_path: Path) -> None:
    spec = StudentSpec(layers="first:1")
    derived = distill.derive_student(spec, tiny_dir, tmp_path / "student")
    assert (derived.kept, derived.source_layers) == ((0,), 2)
    size = distill.size_metrics(spec, tiny_dir)
    assert (size["student_layers"], size["teacher_layers"]) == (1, 2)
    assert size["student_weights_bytes"] == derived.weights_bytes < size["teacher_weights_bytes"]
    assert 0 < size["student_size_fraction"] < 1

    recipe = make_recipe(tmp_path / "run", "sft", derived.out, ROWS, full_parameters=True, max_steps=2, batch_size=1)
    done = run(recipe)
    out = Path(done.recipe.out_dir)
    manifest = validate_model_dir(out, max_bytes=1 << 30)
    assert manifest.num_layers == 1
    assert (out / "tokenizer_config.json").is_file()
    assert done.result.steps == 2


@dataclass
class FakeWorker:
    settings: Settings
    events: list[str] = field(default_factory=list)

    def event(self, job: JobInfo, message: str, **_: Any) -> None:
        self.events.append(message)


def job_with(config: dict[str, Any] | None, method: str = "distillation", hp: dict[str, Any] | None = None) -> JobInfo:
    """What student_model and resolve_hyperparameters read of a job: its method, config and hyperparameters."""
    return SimpleNamespace(method=method, config=config, hyperparameters=hp or {})  # type: ignore[return-value]


def test_the_worker_derives_the_student_of_a_full_job_only(tiny_dir: Path, tmp_path: Path) -> None:
    w = FakeWorker(Settings(data_dir=tmp_path / "data", base_model_path=tiny_dir, base_model_name="tiny"))
    config = DistillSpec(system="Be terse.", student=StudentSpec(layers=(1,))).to_json()
    full = hyperparameters.resolve("distillation", {"finetuning_type": "full"}, 4)
    lora = hyperparameters.resolve("distillation", {}, 4)
    out = tmp_path / "job" / "student"
    assert student_model(w, job_with(DistillSpec(system="x").to_json()), full, out) is None  # type: ignore[arg-type]
    assert student_model(w, job_with(config, method="supervised"), full, out) is None  # type: ignore[arg-type]
    with pytest.raises(TailorError) as e:
        student_model(w, job_with(config), lora, out)  # type: ignore[arg-type]
    assert e.value.param == "hyperparameters.finetuning_type"
    assert not out.exists()
    assert student_model(w, job_with(config), full, out) == out  # type: ignore[arg-type]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert w.events == ["Student: tiny with 1 of its 2 layers (0 MiB of weights), all of them trained"]


def test_the_worker_trains_a_student_at_the_students_learning_rate() -> None:
    full = {"finetuning_type": "full", "learning_rate_multiplier": 0.5}
    student = DistillSpec(system="Be terse.", student=StudentSpec(layers="every-other")).to_json()
    got = resolve_hyperparameters(job_with(student, hp=full), 40)
    assert got.learning_rate == pytest.approx(0.5 * hyperparameters.STUDENT_LEARNING_RATE)
    whole = resolve_hyperparameters(job_with(DistillSpec(system="Be terse.").to_json(), hp=full), 40)
    assert whole.learning_rate == pytest.approx(0.5 * hyperparameters.FULL_LEARNING_RATE["distillation"])
    supervised = resolve_hyperparameters(job_with(None, method="supervised", hp=full), 40)
    assert supervised.learning_rate == pytest.approx(0.5 * hyperparameters.FULL_LEARNING_RATE["supervised"])
