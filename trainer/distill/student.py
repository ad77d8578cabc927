"""A smaller student: the API's `method.distillation.student`.

Without it a distillation job trains an adapter on the job's model, so the student is as
large as the teacher: it saves the context's prompt tokens, not compute. With
`{"layers": "every-other"}` (or `first:N`, `spread:N`, or a list of layer indices:
adapters.layer_selection) the student is the teacher's base model with only those decoder
layers (adapters.derived_model, its weights copied from the teacher's), and the job trains
all of its parameters on the teacher's answers, as `finetuning_type: "full"` does. The
result is a whole model (a version of kind `model`), served on an engine of its own.

The layer spec is tenant input that names files' contents: it is only ever read by
adapters.layer_selection (a 400 for anything but the forms above, in range for the base),
and the student is written to a fixed directory of the job's own, never to a path built
from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.derived_model import Derivation, DerivedSize, derive_model, derived_size, layer_count
from adapters.layer_selection import select_layers
from core.errors import TailorError, bad_request
from trainer import hyperparameters

PARAM = "method.distillation.student"
# Longer than any spec layer_selection reads ("spread:N", or indices of a model with
# thousands of layers): anything past it is refused before it is parsed.
MAX_LAYERS_CHARS = 8192
MAX_LAYER_INDICES = 4096


@dataclass(frozen=True)
class StudentSpec:
    """The student's decoder layers: a layer_selection spec, or the indices themselves."""

    layers: str | tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers if isinstance(self.layers, str) else list(self.layers)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> StudentSpec | None:
        if not data:
            return None
        layers = data["layers"]
        return cls(layers=layers if isinstance(layers, str) else tuple(layers))


def parse_student(raw: Any, base_model_path: Path) -> StudentSpec | None:
    """Validate `method.distillation.student` against the base model's layers: 400s naming the field."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request('student must be an object such as {"layers": "every-other"}.', param=PARAM)
    unknown = sorted(set(raw) - {"layers"})
    if unknown:
        raise bad_request(f"Unknown student field {unknown[0]!r}; expected layers.", param=f"{PARAM}.{unknown[0]}")
    layers = raw.get("layers")
    param = f"{PARAM}.layers"
    if isinstance(layers, str) and 0 < len(layers) <= MAX_LAYERS_CHARS:
        spec = StudentSpec(layers=layers)
    elif isinstance(layers, list) and 0 < len(layers) <= MAX_LAYER_INDICES:
        if any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
            raise bad_request("student.layers must be a list of integer layer indices.", param=param)
        spec = StudentSpec(layers=tuple(layers))
    else:
        raise bad_request(
            "student.layers must be every-other, first:N, spread:N, or a list of ascending layer indices.",
            param=param,
        )
    kept_layers(spec, base_model_path)
    return spec


def kept_layers(spec: StudentSpec, source: Path) -> tuple[int, ...]:
    """The source's layers the student keeps; a 400 naming the field when the spec does not fit it."""
    try:
        return select_layers(spec.layers, layer_count(source))
    except TailorError as e:
        raise bad_request(e.message, code=e.code, param=f"{PARAM}.layers") from None


def student_hyperparameters(hp: dict[str, Any]) -> dict[str, Any]:
    """A student's hyperparameters: all of its parameters are trained (it has no base to put an
    adapter on), so finetuning_type is "full", and "lora" is a 400."""
    if hp.get("finetuning_type", hyperparameters.FULL) != hyperparameters.FULL:
        raise bad_request(
            'A smaller student trains all of its parameters: finetuning_type must be "full" (or left out).',
            param="hyperparameters.finetuning_type",
        )
    return {**hp, "finetuning_type": hyperparameters.FULL}


def derive_student(spec: StudentSpec, source: Path, out: Path) -> Derivation:
    """Write the student, the model at `source` with the spec's layers, to `out`."""
    return derive_model(source, out, kept_layers(spec, source))


def size_metrics(spec: StudentSpec, source: Path) -> dict[str, Any]:
    """The student's size against the model it was derived from (the teacher's base)."""
    size: DerivedSize = derived_size(source, kept_layers(spec, source))
    return {
        "student_layers": size.kept_layers,
        "teacher_layers": size.source_layers,
        "student_weights_bytes": size.kept_bytes,
        "teacher_weights_bytes": size.source_bytes,
        "student_size_fraction": round(size.kept_bytes / size.source_bytes, 4) if size.source_bytes else None,
    }
