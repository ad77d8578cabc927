"""The context a teacher answers with, and what it costs: the prompt tokens each request
pays for it, which the distilled student no longer pays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from trainer.distill.spec import DistillSpec
from trainer.records import Message


def with_context(spec: DistillSpec, messages: Sequence[Message]) -> list[Message]:
    """The teacher's prompt: the context's system prompt and few-shot turns, then the input.

    An input with its own system message keeps it, after the context's (chat templates
    expect one system message, first).
    """
    rest = list(messages)
    system = spec.system
    if rest and rest[0]["role"] == "system":
        own = rest.pop(0)["content"]
        system = f"{system}\n\n{own}" if system else own
    head = [{"role": "system", "content": system}] if system else []
    return [*head, *[dict(m) for m in spec.examples], *rest]


def context_token_counts(
    count: Callable[[Sequence[Message]], int], spec: DistillSpec, prompts: Sequence[Sequence[Message]]
) -> dict[str, float]:
    """Mean prompt tokens per request with the context and without: what distillation saves."""
    if not prompts:
        return {}
    with_ctx = sum(count(with_context(spec, p)) for p in prompts) / len(prompts)
    without = sum(count(p) for p in prompts) / len(prompts)
    saved = with_ctx - without
    return {
        "prompt_tokens_with_context": round(with_ctx, 1),
        "prompt_tokens_without_context": round(without, 1),
        "prompt_tokens_saved_per_request": round(saved, 1),
        "prompt_tokens_saved_fraction": round(saved / with_ctx, 4) if with_ctx else 0.0,
    }


def token_counter(model_dir: Path) -> Callable[[Sequence[Message]], int]:
    """Prompt tokens of a chat for the served model (its chat template, generation prompt on)."""
    from transformers import AutoTokenizer

    from trainer.compute.encoding import render

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda messages: len(render(tokenizer, messages, add_generation_prompt=True))
