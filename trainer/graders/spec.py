"""Grader definitions as OpenAI's API takes them (GraderStringCheck, GraderTextSimilarity,
GraderPython, GraderScoreModel, GraderLabelModel, GraderMulti), and `parse_grader`, which turns
a request's `grader` into one of them or a 400 naming the field.

Beyond the schema's shapes, `parse_grader` checks what a grade would otherwise fail on later:
template variables, the multi grader's formula and the names it uses, labels, ranges, content
kinds the text models here cannot read (images, audio), and what this server cannot run
(cosine similarity without an embeddings model, Python graders unless the operator enabled them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import TailorError, bad_request, invalid_body
from trainer.graders import formula, templates

MAX_PYTHON_SOURCE_CHARS = 256 * 1024  # OpenAI's limit on a Python grader's source
MAX_SUB_GRADERS = 16  # a multi grader's; each may call a model or run a sandbox

Metric = Literal[
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class StringCheckGrader(_Spec):
    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Spec):
    type: Literal["text_similarity"] = "text_similarity"
    name: str
    input: str
    reference: str
    evaluation_metric: Metric


class PythonGrader(_Spec):
    type: Literal["python"]
    name: str
    source: str = Field(max_length=MAX_PYTHON_SOURCE_CHARS)
    image_tag: str | None = None


class InputText(_Spec):
    type: Literal["input_text"]
    text: str


class OutputText(_Spec):
    type: Literal["output_text"]
    text: str


class Unreadable(_Spec):
    """Image and audio content: valid in OpenAI's schema, but not for the text models here."""

    type: Literal["input_image", "input_audio"]


ContentItem = Annotated[InputText | OutputText | Unreadable, Field(discriminator="type")]


class EvalMessage(_Spec):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentItem | list[str | ContentItem]
    type: Literal["message"] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        parts = value if isinstance(value, list) else [value]
        if any(isinstance(p, Unreadable) for p in parts):
            raise ValueError("image and audio inputs are not supported: the grader models here read text only")
        return value

    def texts(self) -> list[str]:
        parts = self.content if isinstance(self.content, list) else [self.content]
        return [p if isinstance(p, str) else p.text for p in parts if not isinstance(p, Unreadable)]


class SamplingParams(_Spec):
    seed: int | None = None
    top_p: float | None = Field(None, ge=0, le=1)
    temperature: float | None = Field(None, ge=0, le=2)
    max_completions_tokens: int | None = Field(None, ge=1)
    reasoning_effort: str | None = None  # accepted; the models here do not reason


class ScoreModelGrader(_Spec):
    type: Literal["score_model"]
    name: str
    model: str = Field(min_length=1)
    input: list[EvalMessage] = Field(min_length=1)
    range: tuple[float, float] = (0.0, 1.0)
    sampling_params: SamplingParams | None = None

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError("range is [low, high] with low < high")
        return value


class LabelModelGrader(_Spec):
    type: Literal["label_model"]
    name: str
    model: str = Field(min_length=1)
    input: list[EvalMessage] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    passing_labels: list[str] = Field(min_length=1)
    sampling_params: SamplingParams | None = None

    @model_validator(mode="after")
    def _subset(self) -> LabelModelGrader:
        if not set(self.passing_labels) <= set(self.labels):
            raise ValueError("passing_labels must be a subset of labels")
        return self


SubGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
    Field(discriminator="type"),
]


class MultiGrader(_Spec):
    """`graders`: OpenAI's guide gives a map of name -> grader, its API schema one grader; both are
    taken (and written back as given). `calculate_output` names each by its key (the one grader
    by its `name`)."""

    type: Literal["multi"] = "multi"
    name: str
    graders: dict[str, SubGrader] = Field(min_length=1, max_length=MAX_SUB_GRADERS)
    calculate_output: str = Field(min_length=1)
    _single: bool = PrivateAttr(False)

    @model_validator(mode="wrap")
    @classmethod
    def _one_or_many(cls, data: Any, handler: Any) -> MultiGrader:
        graders = data.get("graders") if isinstance(data, dict) else None
        single = isinstance(graders, dict) and isinstance(graders.get("type"), str)
        if single:
            data = {**data, "graders": {str(graders.get("name", "")): graders}}
        model = handler(data)
        model._single = single
        return model  # type: ignore[no-any-return]

    def named(self) -> dict[str, Grader]:
        return dict(self.graders)

    def public(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude_none=True)
        if self._single:
            body["graders"] = next(iter(body["graders"].values()))
        return body


Grader = StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader | MultiGrader
ModelGrader = ScoreModelGrader | LabelModelGrader
_TOP_LEVEL = TypeAdapter(
    Annotated[
        StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader,
        Field(discriminator="type"),
    ]
)


@dataclass(frozen=True)
class Capabilities:
    """What this server can run, from its settings."""

    python: bool = False  # the operator enabled Python graders (and the sandbox works)
    python_refusal: str | None = None  # why not, when enabled but unusable
    embeddings: bool = False  # an embeddings model for `cosine` is configured


def parse_grader(raw: Any, capabilities: Capabilities, param: str = "grader") -> Grader:
    """The grader in `raw`, checked; a 400 (with `param`) for anything a grade would fail on."""
    if isinstance(raw, dict) and raw.get("type") == "label_model":
        raise bad_request(
            "A label_model grader can only be used inside a multi grader here, as in OpenAI's API.",
            code="invalid_grader",
            param=f"{param}.type",
        )
    try:
        grader = _TOP_LEVEL.validate_python(raw)
    except ValidationError as exc:
        raise _named(invalid_body(exc.errors()), param) from None
    check_grader(grader, capabilities, param)
    return grader


_TAGS = frozenset({"string_check", "text_similarity", "python", "score_model", "label_model", "multi"})


def _named(error: TailorError, param: str) -> TailorError:
    inner = error.param
    if inner:
        # Drop pydantic's union tags (`string_check.input` -> `input`), keep the field path.
        parts = [p for p in inner.split(".") if p not in _TAGS and "[" not in p]
        inner = ".".join(parts)
    full = f"{param}.{inner}" if inner else param
    message = error.message.replace(f"'{error.param}'", f"'{full}'") if error.param else error.message
    return TailorError(400, message, code="invalid_grader", param=full)


def check_grader(grader: Grader, capabilities: Capabilities, param: str) -> None:
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        templates.check(grader.input, f"{param}.input")
        templates.check(grader.reference, f"{param}.reference")
    cosine = isinstance(grader, TextSimilarityGrader) and grader.evaluation_metric == "cosine"
    if cosine and not capabilities.embeddings:
        raise bad_request(
            "evaluation_metric 'cosine' needs an embeddings model, and this server has none configured; use "
            "fuzzy_match, bleu, gleu, meteor or rouge_* instead.",
            code="cosine_unavailable",
            param=f"{param}.evaluation_metric",
        )
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        for i, message in enumerate(grader.input):
            for text in message.texts():
                templates.check(text, f"{param}.input[{i}].content")
    if isinstance(grader, PythonGrader):
        _check_python(grader, capabilities, param)
    if isinstance(grader, MultiGrader):
        named = grader.named()
        for name, sub in named.items():
            check_grader(sub, capabilities, f"{param}.graders.{name}")
        try:
            formula.parse(grader.calculate_output, set(named))
        except formula.FormulaError as exc:
            raise bad_request(
                f"Invalid calculate_output: {exc}", code="invalid_grader", param=f"{param}.calculate_output"
            ) from None


def _check_python(grader: PythonGrader, capabilities: Capabilities, param: str) -> None:
    # The source is not compiled here: compiling is superlinear in places (a call with many
    # keyword arguments) and cannot leave the event loop (it holds the GIL). The sandbox
    # compiles it, under its limits; a SyntaxError is then the grade's runtime error.
    if not capabilities.python:
        raise bad_request(
            "Python graders are disabled on this server: the operator enables them with "
            "TAILOR_PYTHON_GRADERS_ENABLED=true (they run in an isolated sandbox).",
            code="python_grader_disabled",
            param=f"{param}.type",
        )
    if capabilities.python_refusal is not None:
        raise bad_request(
            f"Python graders cannot run on this server: its sandbox is unavailable ({capabilities.python_refusal}).",
            code="python_grader_unavailable",
            param=f"{param}.type",
        )
    if "def grade" not in grader.source:
        raise bad_request(
            "The Python grader's source must define grade(sample, item) -> float.",
            code="invalid_grader",
            param=f"{param}.source",
        )


def public(grader: Grader) -> dict[str, Any]:
    """The grader as OpenAI's API writes it back (ValidateGraderResponse)."""
    if isinstance(grader, MultiGrader):
        return grader.public()
    return grader.model_dump(mode="json", exclude_none=True)
