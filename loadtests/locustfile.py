"""Locust scenarios for Tailor: many tenants, a long tail of adapters, streams, feedback.

    python -m loadtests.run_load                      # sets everything up and runs this file
    python -m locust -f loadtests/locustfile.py --headless -u 8 -r 4 -t 60s \\
        --host http://127.0.0.1:8000 --tenants-file tenants.json --csv out/locust

Each simulated user is one client of one tenant (users are dealt round-robin over the
tenants in --tenants-file, a JSON list of {"tenant", "key", "models": [...], "base_model"})
and sends chat completions in a closed loop with a think time between them:

* model: a Zipf-like choice over the tenant's `models` (the list is in popularity order:
  the first is asked most, the last least), so a few adapters take most of the traffic and
  the rest form a long tail the engine has to keep loading;
* streaming or not (--stream-share), short questions or long prompts (--long-share: a
  document to summarise or a multi-turn conversation with history);
* a share of answered requests (--feedback-share) is followed by `POST /v1/feedback` on the
  returned completion id, rated good or bad.

Stats entries (all in the --csv files, with percentiles):

* `POST chat` / `POST chat stream`: whole request latency (for streams: until [DONE]);
* `TTFT chat stream`: time to the first content token;
* `TPOT chat stream`: time per output token after the first, (latency - TTFT) / (tokens - 1),
  token counts from `usage` (streams ask `stream_options.include_usage`);
* `POST feedback`.

With --records-file (or TAILOR_LOAD_RECORDS) every request also appends one JSON line (tenant,
model, stream, latency, TTFT, TPOT, usage tokens, status), plus a `meta` line at start and stop
with the wall-clock times; run_load reads it for token throughput and per-model figures.
Users stop when locust's run time (-t) ends: requests still in flight then are cut off, counted
in the stop line as `interrupted`, not as failures.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, events, task

from loadtests.prompts import PROMPTS

# --- configuration --------------------------------------------------------------------------


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("Tailor scenario")
    g.add_argument(
        "--tenants-file",
        env_var="TAILOR_LOAD_TENANTS",
        default="",
        help="JSON list of {tenant, key, models, base_model} (written by run_load)",
    )
    g.add_argument(
        "--api-key",
        env_var="TAILOR_API_KEY",
        default="",
        help="without --tenants-file: one tenant key; its models come from GET /v1/models",
    )
    g.add_argument("--records-file", env_var="TAILOR_LOAD_RECORDS", default="", help="JSONL of every request")
    g.add_argument("--stream-share", env_var="TAILOR_LOAD_STREAM_SHARE", type=float, default=0.6)
    g.add_argument("--long-share", env_var="TAILOR_LOAD_LONG_SHARE", type=float, default=0.25)
    g.add_argument("--feedback-share", env_var="TAILOR_LOAD_FEEDBACK_SHARE", type=float, default=0.3)
    g.add_argument("--zipf-s", env_var="TAILOR_LOAD_ZIPF_S", type=float, default=1.2, help="Zipf exponent")
    g.add_argument("--max-tokens", env_var="TAILOR_LOAD_MAX_TOKENS", type=int, default=48)
    g.add_argument("--min-tokens", env_var="TAILOR_LOAD_MIN_TOKENS", type=int, default=8)
    g.add_argument("--think-min", env_var="TAILOR_LOAD_THINK_MIN", type=float, default=0.2, help="seconds")
    g.add_argument("--think-max", env_var="TAILOR_LOAD_THINK_MAX", type=float, default=1.5, help="seconds")
    g.add_argument("--request-timeout", env_var="TAILOR_LOAD_REQUEST_TIMEOUT", type=float, default=180.0)


# --- prompts ---------------------------------------------------------------------------------

SHORT_PROMPTS = (
    *PROMPTS,
    "My invoice shows a double charge for March. What should I do?",
    "Translate 'good morning' into Spanish and German.",
    "How do I reset my password?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
)

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise support agent for an online shop. Answer in at most three sentences.",
    "You are a customer-service assistant for a bank. Be polite and precise.",
)

_PARAGRAPHS = (
    "The quarterly report shows revenue growth of twelve percent, driven mostly by the new "
    "subscription tier launched in the spring. Churn stayed flat while support tickets rose.",
    "Customers in the northern region reported slower deliveries during the holiday period; the "
    "logistics team traced the delays to a warehouse migration that overran by two weeks.",
    "The engineering team replaced the legacy billing service with a new event-driven pipeline. "
    "Invoices are now generated within minutes instead of the previous nightly batch.",
    "A survey of three thousand users found that the mobile app is preferred over the website for "
    "quick tasks, while complex changes such as plan upgrades are still done on desktop.",
    "Marketing spend shifted from paid search to partnerships; acquisition cost fell by eight percent "
    "but the volume of trial sign-ups dropped slightly in the last month of the quarter.",
    "The security audit recommended enforcing two-factor authentication for administrators, rotating "
    "API keys every ninety days, and logging every change to billing settings.",
    "Next quarter the company plans to open an office in Lisbon, hire twenty support staff, and pilot "
    "an AI assistant that drafts first replies to customer tickets for human review.",
)

_HISTORY = (
    ("user", "Hi, I ordered a pair of running shoes last week and they have not arrived yet."),
    ("assistant", "I'm sorry to hear that. Could you share your order number so I can check its status?"),
    ("user", "Sure, it is 48213. The tracking page says it left the warehouse five days ago."),
    ("assistant", "Thanks. The parcel is with the courier and seems to be delayed at a regional depot."),
    ("user", "That's annoying, I need them for a race on Sunday. Can you speed it up?"),
    ("assistant", "I can request priority handling, though I can't guarantee delivery before Sunday."),
    ("user", "Please do. And if it doesn't arrive in time, can I get a refund for the shipping?"),
)


def long_messages(rng: random.Random) -> list[dict[str, str]]:
    """A long prompt (several hundred tokens): a document to summarise, or a conversation."""
    if rng.random() < 0.5:
        paragraphs = [rng.choice(_PARAGRAPHS) for _ in range(rng.randint(5, 9))]
        ask = rng.choice(("Summarise this report in three bullet points.", "What are the main risks mentioned?"))
        return [
            {"role": "system", "content": SYSTEM_PROMPTS[0]},
            {"role": "user", "content": "\n\n".join(paragraphs) + "\n\n" + ask},
        ]
    # Repeat the exchange but end on ONE user turn: templates that insist on alternating
    # roles (Llama-2, Mistral, Gemma) refuse two user messages in a row.
    turns = _HISTORY[:-1] * rng.randint(1, 2) + _HISTORY[-1:]
    return [
        {"role": "system", "content": rng.choice(SYSTEM_PROMPTS[1:])},
        *({"role": role, "content": text} for role, text in turns),
    ]


def short_messages(rng: random.Random) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": rng.choice(SHORT_PROMPTS)}]
    if rng.random() < 0.5:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return messages


def zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


# --- records ---------------------------------------------------------------------------------


class Records:
    """Appends one JSON line per request (greenlets in one process: a lock is enough)."""

    def __init__(self) -> None:
        self._file: Any = None
        self._lock = threading.Lock()
        self.in_flight = 0
        self.interrupted = 0

    def open(self, path: str) -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, **fields: Any) -> None:
        if self._file is not None:
            with self._lock:
                self._file.write(json.dumps(fields, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


RECORDS = Records()
_USER_NUMBERS = itertools.count()


@events.test_start.add_listener
def _on_start(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    RECORDS.open(getattr(opts, "records_file", "") if opts else "")
    RECORDS.write(kind="meta", event="start", t=time.time())


@events.test_stop.add_listener
def _on_stop(environment: Any, **_: Any) -> None:
    RECORDS.write(kind="meta", event="stop", t=time.time(), interrupted=RECORDS.interrupted)
    RECORDS.close()


def _load_tenants(opts: Any, client: Any) -> list[dict[str, Any]]:
    if opts.tenants_file:
        tenants = json.loads(Path(opts.tenants_file).read_text())
        if not tenants:
            raise RuntimeError(f"{opts.tenants_file} lists no tenants")
        return tenants
    if not opts.api_key:
        raise RuntimeError("give --tenants-file (TAILOR_LOAD_TENANTS) or --api-key (TAILOR_API_KEY)")
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {opts.api_key}"}, name="GET models")
    r.raise_for_status()
    # Pinned versions (`name@vN`) are listed too; the load goes to the names clients use.
    models = [m["id"] for m in r.json()["data"] if "@v" not in m["id"]]
    # /v1/models lists the base model first; put the adapters ahead of it in popularity.
    return [{"tenant": "default", "key": opts.api_key, "models": [*models[1:], models[0]], "base_model": models[0]}]


_TENANTS: list[dict[str, Any]] | None = None


# --- the user --------------------------------------------------------------------------------


class TenantClient(HttpUser):
    """One client application of one tenant."""

    def wait_time(self) -> float:
        o = self.environment.parsed_options
        return self.rng.uniform(o.think_min, max(o.think_min, o.think_max))

    def on_start(self) -> None:
        global _TENANTS
        self.opts = self.environment.parsed_options
        number = next(_USER_NUMBERS)
        self.rng = random.Random(number * 7919 + int(time.time()))
        if _TENANTS is None:
            _TENANTS = _load_tenants(self.opts, self.client)
        spec = _TENANTS[number % len(_TENANTS)]
        self.tenant: str = spec["tenant"]
        self.models: list[str] = list(spec["models"])
        self.base_model: str | None = spec.get("base_model")
        self.weights = zipf_weights(len(self.models), self.opts.zipf_s)
        self.headers = {"Authorization": f"Bearer {spec['key']}"}

    # One task: what a request looks like is drawn per request, so the mix follows the shares.
    @task
    def chat(self) -> None:
        rng, o = self.rng, self.opts
        model = rng.choices(self.models, weights=self.weights)[0]
        long = rng.random() < o.long_share
        body: dict[str, Any] = {
            "model": model,
            "messages": long_messages(rng) if long else short_messages(rng),
            "max_tokens": rng.randint(o.min_tokens, max(o.min_tokens, o.max_tokens)),
            "temperature": 0.7,
        }
        stream = rng.random() < o.stream_share
        record: dict[str, Any] = {
            "kind": "chat",
            "tenant": self.tenant,
            "model": model,
            "base": model == self.base_model,
            "stream": stream,
            "long": long,
            "t": time.time(),
        }
        RECORDS.in_flight += 1
        try:
            if stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
                self._stream(body, record)
            else:
                self._plain(body, record)
        except gevent.GreenletExit:
            # Locust's run time ended with this request in flight: not a failure.
            RECORDS.interrupted += 1
            raise
        finally:
            RECORDS.in_flight -= 1
        if record.get("ok"):
            RECORDS.write(**record)
            if record.get("id") and rng.random() < o.feedback_share:
                self._feedback(record["id"])
        else:
            RECORDS.write(**record)

    def _post(self, path: str, body: dict[str, Any], name: str, **extra: Any) -> Any:
        """The tenant's POST under the stats entry `name`, its outcome ours to mark (catch_response)."""
        return self.client.post(
            path,
            json=body,
            headers=self.headers,
            name=name,
            catch_response=True,
            timeout=self.opts.request_timeout,
            **extra,
        )

    def _plain(self, body: dict[str, Any], record: dict[str, Any]) -> None:
        start = time.perf_counter()
        with self._post("/v1/chat/completions", body, "chat") as resp:
            record["latency_ms"] = (time.perf_counter() - start) * 1000
            record["status"] = resp.status_code
            if resp.status_code != 200:
                record["ok"] = False
                record["error"] = _error_text(resp)
                resp.failure(f"HTTP {resp.status_code}: {record['error']}")
                return
            try:
                data = resp.json()
                usage = data.get("usage") or {}
                record["id"] = data["id"]
                record["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
                record["completion_tokens"] = int(usage.get("completion_tokens") or 0)
                if not data.get("choices"):
                    raise ValueError("no choices in the response")
            except (ValueError, KeyError, TypeError) as exc:
                record["ok"] = False
                record["error"] = f"bad response body: {exc}"
                resp.failure(record["error"])
                return
            record["ok"] = True
            resp.success()

    def _stream(self, body: dict[str, Any], record: dict[str, Any]) -> None:
        start = time.perf_counter()
        first_token_s: float | None = None
        usage: dict[str, Any] = {}
        done = False
        with self._post("/v1/chat/completions", body, "chat stream", stream=True) as resp:
            record["status"] = resp.status_code
            try:
                if resp.status_code != 200:
                    raise _StreamError(f"HTTP {resp.status_code}: {_error_text(resp)}")
                for line in resp.iter_lines():
                    if not line or not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    event = json.loads(payload)
                    if "error" in event:
                        raise _StreamError(f"error event: {event['error']}")
                    record.setdefault("id", event.get("id"))
                    if event.get("usage"):
                        usage = event["usage"]
                    if first_token_s is None:
                        for choice in event.get("choices") or ():
                            if (choice.get("delta") or {}).get("content"):
                                first_token_s = time.perf_counter() - start
                                break
                if not done:
                    raise _StreamError("stream ended without [DONE]")
            except Exception as exc:  # bad JSON, error events, connection reset mid-stream (requests' errors)
                record["latency_ms"] = (time.perf_counter() - start) * 1000
                record["ok"] = False
                record["error"] = (str(exc) if isinstance(exc, _StreamError) else f"{type(exc).__name__}: {exc}")[:300]
                resp.request_meta["response_time"] = record["latency_ms"]
                resp.failure(record["error"])
                return
            latency_s = time.perf_counter() - start
            record["latency_ms"] = latency_s * 1000
            record["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
            record["completion_tokens"] = tokens = int(usage.get("completion_tokens") or 0)
            record["ok"] = True
            # Locust timed the stream until its headers; report the whole stream instead.
            resp.request_meta["response_time"] = record["latency_ms"]
            resp.request_meta["response_length"] = tokens
            resp.success()
        if first_token_s is not None:
            record["ttft_ms"] = first_token_s * 1000
            self._metric("TTFT", record["ttft_ms"], tokens)
            if tokens > 1:
                record["tpot_ms"] = (latency_s - first_token_s) * 1000 / (tokens - 1)
                self._metric("TPOT", record["tpot_ms"], tokens)

    def _metric(self, kind: str, ms: float, tokens: int) -> None:
        events.request.fire(
            request_type=kind,
            name="chat stream",
            response_time=ms,
            response_length=tokens,
            exception=None,
            context={"tenant": self.tenant},
        )

    def _feedback(self, interaction_id: str) -> None:
        rating = "good" if self.rng.random() < 0.7 else "bad"
        start = time.perf_counter()
        with self._post("/v1/feedback", {"interaction_id": interaction_id, "rating": rating}, "feedback") as resp:
            ok = resp.status_code == 201
            if ok:
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}: {_error_text(resp)}")
        RECORDS.write(
            kind="feedback",
            tenant=self.tenant,
            ok=ok,
            status=resp.status_code,
            latency_ms=(time.perf_counter() - start) * 1000,
        )


class _StreamError(Exception):
    pass


def _error_text(resp: Any) -> str:
    try:
        return str(resp.json()["error"]["message"])[:200]
    except Exception:
        return (resp.text or str(getattr(resp, "error", "")) or "")[:200]
