"""The benchmark's settings and the one request it sends, interactively and as batch lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadtests.chat_client import CHAT_PATH

__all__ = ["CHAT_PATH", "QUICK", "BenchConfig", "chat_body"]


@dataclass(frozen=True)
class BenchConfig:
    clients: int = 2
    requests: int = 12  # per client per round
    rounds: int = 3  # A and B rounds each
    max_tokens: int = 32
    batch_lines: int = 400  # more than a B round can answer, so the batch runs throughout
    alone_s: float = 5.0


QUICK = BenchConfig(clients=2, requests=3, rounds=1, max_tokens=8, batch_lines=40, alone_s=2.0)


def chat_body(model: str, prompt: str, cfg: BenchConfig) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": cfg.max_tokens,
        "ignore_eos": True,
    }
