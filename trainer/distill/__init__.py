"""Distillation: a teacher's answers become the training data of a cheaper adapter.

One job method ("distillation") covers both ways the teacher is reached:

- prompt (context) distillation: the teacher is a model Tailor itself serves (the base model
  or one of the tenant's adapters), run in the trainer worker with the tenant's long
  context (a system prompt and/or few-shot turns) in front of every input. The student
  learns to give the same answers without the context, so every later request stops paying
  for those prompt tokens;
- teacher distillation: the teacher is any OpenAI-compatible endpoint (a larger model
  elsewhere), called with the same context (or none); the student learns its answers.

The worker turns a file of inputs (chat prompts ending with a user turn) into a dataset:
teacher answers for every input, split into training and held-out examples whose
reference is the teacher's answer. Evaluation on that held-out split therefore measures
agreement with the teacher (exact match, token F1), and `context_token_counts` measures
the prompt tokens the context costs per request.

A student (`student`, trainer.distill.student) makes the result smaller too: the teacher's
base with fewer decoder layers, all of its weights trained on the teacher's answers, stored
and served as a whole model.

Modules: spec (the job's settings), student (the smaller student), context (the teacher's prompt and its token cost),
teachers (the protocol and the local teacher), remote (an OpenAI-compatible endpoint) and
deadline (its connections, bounded).
"""

from trainer.distill.context import context_token_counts, token_counter, with_context
from trainer.distill.remote import MIN_TEACHER_PHASE_S, TEACHER_ATTEMPTS, RemoteTeacher, phase_limit_s
from trainer.distill.spec import DistillSpec, TeacherSpec, parse_spec, teacher_api_key
from trainer.distill.student import StudentSpec, derive_student, size_metrics, student_hyperparameters
from trainer.distill.teachers import LocalTeacher, Teacher

__all__ = [
    "MIN_TEACHER_PHASE_S",
    "TEACHER_ATTEMPTS",
    "DistillSpec",
    "LocalTeacher",
    "RemoteTeacher",
    "StudentSpec",
    "Teacher",
    "TeacherSpec",
    "context_token_counts",
    "derive_student",
    "parse_spec",
    "phase_limit_s",
    "size_metrics",
    "student_hyperparameters",
    "teacher_api_key",
    "token_counter",
    "with_context",
]
