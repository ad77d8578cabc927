"""A closed-loop load generator: N clients, each sending its next request when the last one ends.

    python -m loadtests.closed_loop --url http://127.0.0.1:8000 --key sk-... --model M --clients 20 --seconds 5

Prints one JSON object: requests, failures, requests/s, latency percentiles (ms) and the CPU
seconds this process used, so a benchmark can say what share of the machine the load
generator itself took. aiohttp on uvloop, one connection per client, kept alive: the client's
own cost per request stays small and constant, whatever it is pointed at.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import statistics
import time
from dataclasses import asdict, dataclass

import aiohttp
import orjson
import uvloop

from loadtests.stats import percentile

PROMPT = "What is the capital of France?"


@dataclass(frozen=True)
class LoopResult:
    clients: int
    seconds: float
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cpu_s: float  # CPU seconds (user + system) this generator used while measuring


def request_body(model: str, *, stream: bool) -> bytes:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


async def _client(
    session: aiohttp.ClientSession, url: str, body: bytes, until: float, measure_from: float, out: list[float]
) -> int:
    failures = 0
    while True:
        started = time.perf_counter()
        if started >= until:
            return failures
        try:
            async with session.post(url, data=body) as resp:
                await resp.read()
                ok = resp.status == 200
        except aiohttp.ClientError:
            ok = False
        if started >= measure_from:
            if ok:
                out.append(time.perf_counter() - started)
            else:
                failures += 1


async def run(
    url: str, key: str, model: str, clients: int, seconds: float, *, warmup_s: float = 1.0, stream: bool = False
) -> LoopResult:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        body = request_body(model, stream=stream)
        now = time.perf_counter()
        measure_from, until = now + warmup_s, now + warmup_s + seconds
        usage_before: resource.struct_rusage | None = None

        async def mark_start() -> None:
            nonlocal usage_before
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            usage_before = resource.getrusage(resource.RUSAGE_SELF)

        marker = asyncio.create_task(mark_start())
        failures = await asyncio.gather(
            *(_client(session, url, body, until, measure_from, latencies) for _ in range(clients))
        )
        await marker
        after = resource.getrusage(resource.RUSAGE_SELF)
    assert usage_before is not None
    cpu = (after.ru_utime - usage_before.ru_utime) + (after.ru_stime - usage_before.ru_stime)
    ms = [x * 1000 for x in latencies]
    return LoopResult(
        clients=clients,
        seconds=seconds,
        requests=len(ms),
        failures=sum(failures),
        rps=len(ms) / seconds,
        p50_ms=percentile(ms, 50) or math.nan,
        p90_ms=percentile(ms, 90) or math.nan,
        p99_ms=percentile(ms, 99) or math.nan,
        mean_ms=statistics.fmean(ms) if ms else math.nan,
        cpu_s=cpu,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m loadtests.closed_loop")
    parser.add_argument("--url", required=True, help="the server's base URL; requests go to /v1/chat/completions")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/") + "/v1/chat/completions"
    result = uvloop.run(
        run(url, args.key, args.model, args.clients, args.seconds, warmup_s=args.warmup_s, stream=args.stream)
    )
    print(orjson.dumps(asdict(result)).decode())


if __name__ == "__main__":
    main()
