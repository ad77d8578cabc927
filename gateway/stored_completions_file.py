"""A fine-tuning file from stored completions: OpenAI's distillation recipe on Tailor.

Store a large model's answers (`store: true`, with `metadata` to find them again), turn the
ones matching a filter into a `fine-tune` file of chat examples (each the stored request's
messages followed by the stored answer), and fine-tune a smaller model on that file.

A stored completion becomes an example only when it can be trained on as it was served:
a text chat ending with a user turn (trainer.datasets.prompt_from_request: no tool calls,
no images, no assistant prefill) answered with finished text (`finish_reason` "stop": an
answer cut off at `max_tokens` would teach stopping mid-sentence). The others are counted
as skipped. The file goes through the Files API's own validation and quotas
(trainer.files.upload_file), so it is like any uploaded file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from core.blobs import BlobStore
from core.db import Database
from core.errors import bad_request
from core.quotas import Quotas
from gateway.stored_completions import Filter, StoredCompletion, iter_completions
from trainer import files
from trainer.datasets import CHAT_ENDPOINT, InvalidExample, Message, check_messages, prompt_from_request
from trainer.files import FileInfo

DEFAULT_FILENAME = "stored-completions.jsonl"


@dataclass(frozen=True)
class TrainingFile:
    file: FileInfo
    examples: int
    skipped: int  # matching stored completions that are no training example


def example(completion: StoredCompletion) -> tuple[Message, ...] | None:
    """The chat example a stored completion makes (prompt + answer), or None (module docstring)."""
    answer = completion.answer
    if completion.finish_reason != "stop" or answer is None or not answer.strip():
        return None
    prompt = prompt_from_request(CHAT_ENDPOINT, completion.request)
    if prompt is None:
        return None
    chat = [*prompt, {"role": "assistant", "content": answer}]
    try:
        # The file parser's own check, so a history turn it would refuse (an empty
        # assistant message) skips this example instead of failing the whole file.
        return check_messages(chat)
    except InvalidExample:
        return None


def create_training_file(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    flt: Filter,
    *,
    filename: str | None = None,
    quotas: Quotas | None = None,
    max_examples: int = files.MAX_FILE_LINES,
) -> TrainingFile:
    """Store a `fine-tune` file of the tenant's stored completions matching `flt`, oldest first."""
    lines: list[str] = []
    matched = skipped = 0
    for completion in iter_completions(db, tenant_id, flt):
        matched += 1
        chat = example(completion)
        if chat is None:
            skipped += 1
            continue
        if len(lines) == max_examples:
            raise bad_request(
                f"More than {max_examples} matching stored chat completions make examples; a training file holds "
                f"at most {max_examples}. Narrow the filter (model, metadata).",
                code="too_many_examples",
            )
        lines.append(json.dumps({"messages": [dict(m) for m in chat]}, ensure_ascii=False))
    if not lines:
        what = f"{matched} stored chat completions match, none usable" if matched else "none match"
        raise bad_request(
            f"No training examples: {what}. An example needs a stored text chat ending with a user turn and a "
            "finished text answer.",
            code="no_examples",
        )
    data = ("\n".join(lines) + "\n").encode("utf-8")
    info = files.upload_file(db, blobs, tenant_id, filename or DEFAULT_FILENAME, data, files.PURPOSE, quotas=quotas)
    return TrainingFile(file=info, examples=len(lines), skipped=skipped)
