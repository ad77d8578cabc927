"""Chat conversations as token ids, with the assistant-only loss mask.

What is learned from a conversation: EVERY assistant turn - its content plus the
end-of-turn token that closes it, so the model also learns to stop. System and user turns
and the chat template's own scaffolding (role headers, the "assistant" generation prompt)
carry no loss. TRL computes such a mask only for chat templates with `{% generation %}`
markers, which most instruct models' templates lack; this module finds it for any template
that renders prefixes as token prefixes: for each assistant turn, the conversation up to it
rendered with `add_generation_prompt=True` must be a token prefix of the whole rendering. A
template for which that does not hold is refused with a clear error instead of silently
training on the wrong tokens. The SFT method hands these ids and masks to TRL as a
pre-tokenised dataset; evaluation scores references with the same mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import TailorError, bad_request

IGNORE_INDEX = -100  # label value torch's cross-entropy (and so HF models) skips
ROLES = ("system", "user", "assistant")


@dataclass
class EncodedExample:
    """A tokenised conversation: input ids and labels (IGNORE_INDEX where no loss)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def assistant_mask(self) -> list[int]:
        return [0 if label == IGNORE_INDEX else 1 for label in self.labels]


def render(tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return [int(t) for t in encoded["input_ids"]]


def validate_messages(messages: Sequence[dict[str, str]]) -> None:
    if not messages:
        raise bad_request("a training example has no messages", param="messages")
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise bad_request(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}", param="messages")
        if not isinstance(content, str):
            raise bad_request(f"message {i} content must be a string", param="messages")
    if messages[0]["role"] == "assistant":
        raise bad_request("a conversation cannot start with an assistant message", param="messages")


def validate_prompt(prompt: Sequence[dict[str, str]]) -> None:
    """A prompt is a non-empty conversation whose last turn is the user's."""
    if not isinstance(prompt, list | tuple) or not prompt:
        raise bad_request("a prompt must be a non-empty list of messages", param="prompt")
    last = prompt[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise bad_request("a prompt must end with a user message", param="prompt")


def encode_conversation(tokenizer: Any, messages: Sequence[dict[str, str]], max_seq_len: int) -> EncodedExample | None:
    """Tokenise one conversation with the chat template; None if no target token survives.

    Labels are IGNORE_INDEX everywhere except on each assistant turn's content and the
    end-of-turn (eos) token closing it. Truncation keeps the first max_seq_len tokens.
    """
    validate_messages(messages)
    full = render(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    eos = tokenizer.eos_token_id
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        for what, part in (("the prompt before", prompt), ("the conversation through", through)):
            if full[: len(part)] != part:
                raise TailorError(
                    500,
                    f"the chat template of {tokenizer.name_or_path!r} does not render {what} assistant message {i} "
                    "as a token prefix of the whole conversation, so the assistant tokens cannot be located for "
                    "the loss mask; this template is not supported for training",
                    code="chat_template_not_prefix_stable",
                )
        start, stop = len(prompt), len(through)
        # Whatever the template puts after the end-of-turn token (often a newline) is
        # scaffolding, not the answer: stop right after eos if present.
        if eos is not None and eos in full[start:stop]:
            stop = full.index(eos, start, stop) + 1
        labels[start:stop] = full[start:stop]
    out = EncodedExample(input_ids=full[:max_seq_len], labels=labels[:max_seq_len])
    return out if out.target_tokens > 0 else None


def encode_completion(
    tokenizer: Any, prompt: Sequence[dict[str, str]], completion: str, max_seq_len: int
) -> EncodedExample | None:
    """prompt + assistant `completion`, with labels only on the completion (and its eos).

    Earlier assistant turns inside a multi-turn prompt are context here: only the final
    answer is scored. None when truncation leaves no answer token.
    """
    validate_prompt(prompt)
    if not isinstance(completion, str):
        raise bad_request("an answer must be a string", param="completion")
    encoded = encode_conversation(tokenizer, [*prompt, {"role": "assistant", "content": completion}], max_seq_len)
    if encoded is None:
        return None
    # encode_conversation has checked that this rendering is a token prefix of the whole
    n_prompt = len(render(tokenizer, prompt, add_generation_prompt=True))
    labels = [IGNORE_INDEX] * min(n_prompt, len(encoded.labels)) + encoded.labels[n_prompt:]
    out = EncodedExample(input_ids=encoded.input_ids, labels=labels)
    return out if out.target_tokens > 0 else None


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else eos (padding is masked out, so its id is moot)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise TailorError(500, "the tokenizer has neither a pad nor an eos token", code="no_pad_token")


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest member: input_ids, attention_mask, labels."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
