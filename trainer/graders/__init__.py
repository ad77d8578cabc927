"""Graders as OpenAI defines them (string_check, text_similarity, score_model, label_model,
python, multi): parsed and checked (`parse_grader`), then run on a sample and a dataset item
(`grade`, `grade_batch`). Torch-free, so the gateway's `/v1/fine_tuning/alpha/graders` routes
and a trainer computing rewards run the very same code; each passes its own way of calling a
model (`GradingContext.models`) and, where enabled, the Python sandbox.

    grader = parse_grader(raw, Capabilities(python=False))
    result = await grade(grader, Sample.from_text(answer), item, GradingContext(models=caller))
    result.reward, result.errors
"""

from trainer.graders.models import ExternalModels, ModelCaller, ModelReply, RoutedModels
from trainer.graders.result import GradeErrors, GradeResult, TokenUsage
from trainer.graders.run import GradingContext, grade, grade_batch
from trainer.graders.sandbox import Sandbox, SandboxLimits
from trainer.graders.spec import Capabilities, Grader, parse_grader, public
from trainer.graders.templates import Sample

__all__ = [
    "Capabilities",
    "ExternalModels",
    "GradeErrors",
    "GradeResult",
    "Grader",
    "GradingContext",
    "ModelCaller",
    "ModelReply",
    "RoutedModels",
    "Sample",
    "Sandbox",
    "SandboxLimits",
    "TokenUsage",
    "grade",
    "grade_batch",
    "parse_grader",
    "public",
]
