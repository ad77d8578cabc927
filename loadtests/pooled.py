"""The timed requests of a benchmark's rounds taken together: rates and latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from loadtests.chat_client import RequestResult
from loadtests.stats import percentile, to_ms


class TimedRound(Protocol):
    @property
    def wall_s(self) -> float: ...

    @property
    def requests(self) -> Sequence[RequestResult]: ...


@dataclass(frozen=True)
class Pooled:
    """Rates are over the summed wall time of the rounds alone, not the pauses between them;
    tokens and latencies come from the answered requests only."""

    requests: list[RequestResult]
    wall_s: float

    @classmethod
    def of(cls, rounds: Sequence[TimedRound]) -> Pooled:
        return cls([q for r in rounds for q in r.requests], sum(r.wall_s for r in rounds))

    @property
    def ok(self) -> list[RequestResult]:
        return [q for q in self.requests if q.ok]

    @property
    def errors(self) -> int:
        return len(self.requests) - len(self.ok)

    @property
    def tokens(self) -> int:
        return sum(q.completion_tokens for q in self.ok)

    def per_s(self, count: float) -> float:
        return count / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.per_s(self.tokens)

    @property
    def tokens_per_request(self) -> float | None:
        ok = self.ok
        return self.tokens / len(ok) if ok else None

    def latency_ms(self, q: float) -> float | None:
        """The q-th percentile (in percent) of the whole latency."""
        return to_ms(percentile([r.latency_s for r in self.ok], q))

    def ttft_ms(self, q: float) -> float | None:
        """The q-th percentile (in percent) of the time to the first text, of streams that had one."""
        return to_ms(percentile([r.ttft_s for r in self.ok if r.ttft_s is not None], q))
