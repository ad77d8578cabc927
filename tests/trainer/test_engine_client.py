"""trainer.compute.engine against a fake vLLM server (httpx.MockTransport): answer budgets,
perplexity from prompt log-probabilities, adapter loading and unloading whatever happens,
retries, and how the worker picks its evaluation engine.

The same client against a real vLLM engine: tests/integration/test_evaluation_live.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from core.errors import TailorError
from trainer.compute.encoding import IGNORE_INDEX, EncodedExample
from trainer.compute.engine import EngineClient, WorkerEngines, answer_budget, target_nll


def test_answer_budget_follows_the_longest_reference_within_the_context() -> None:
    assert answer_budget([3, 10, 4], ceiling=2048) == 31  # 1.5 x 10 + 16
    assert answer_budget([400], ceiling=2048) == 616  # long answers are not cut at a constant
    assert answer_budget([400], ceiling=100) == 100  # never past what the context leaves
    assert answer_budget([], ceiling=2048) == 16


def test_target_nll_sums_only_the_labelled_tokens() -> None:
    example = EncodedExample(input_ids=[5, 6, 7, 8], labels=[IGNORE_INDEX, IGNORE_INDEX, 7, 8])
    logprobs = [None, {"6": {"logprob": -9.0}}, {"7": {"logprob": -0.5}}, {"8": {"logprob": -1.5}, "3": {}}]
    assert target_nll(example, logprobs) == pytest.approx(2.0)
    with pytest.raises(TailorError) as info:  # a token the engine did not score is an engine error
        target_nll(example, logprobs[:3])
    assert info.value.status == 502


class FakeEngine:
    """What the client needs of vLLM's OpenAI server, with a record of what it was asked."""

    def __init__(self, *, fail_first: int = 0, loaded: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.adapters: set[str] = set(loaded)
        self.fail_first = fail_first
        self.in_flight = 0
        self.most_in_flight_scoring = 0
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        path = request.url.path
        self.calls.append((path, body))
        if self.fail_first:
            self.fail_first -= 1
            return httpx.Response(503, json={"error": {"message": "restarting"}})
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "base"}, *({"id": a} for a in self.adapters)]})
        if path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.adapters:
                return httpx.Response(400, json={"error": {"message": "already been loaded"}})
            if "broken" in body["lora_path"]:
                return httpx.Response(400, json={"error": {"message": "no adapter_config.json"}})
            self.adapters.add(body["lora_name"])
            return httpx.Response(200, text="ok")
        if path == "/v1/unload_lora_adapter":
            self.adapters.discard(body["lora_name"])
            return httpx.Response(200, text="ok")
        if path == "/v1/chat/completions":
            text = f"{body['model']}: {body['messages'][-1]['content']} ({body['max_tokens']})"
            return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": text}}]})
        if path == "/v1/completions":
            with self.lock:
                self.in_flight += 1
                self.most_in_flight_scoring = max(self.most_in_flight_scoring, self.in_flight)
            try:
                ids = body["prompt"]
                logprobs = [None] + [{str(t): {"logprob": -0.1 * t}} for t in ids[1:]]
                return httpx.Response(200, json={"choices": [{"text": "x", "prompt_logprobs": logprobs}]})
            finally:
                with self.lock:
                    self.in_flight -= 1
        return httpx.Response(404)


def client_for(engine: FakeEngine) -> EngineClient:
    return EngineClient("http://engine.test", "base", transport=httpx.MockTransport(engine.handle))


def test_answers_keep_order_and_scoring_goes_one_request_at_a_time() -> None:
    engine = FakeEngine()
    client = client_for(engine)
    assert client.healthy()
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(20)]
    assert client.answers("base", prompts, max_tokens=7) == [f"base: q{i} (7)" for i in range(20)]
    assert all(b["temperature"] == 0.0 for p, b in engine.calls if p == "/v1/chat/completions")

    examples = [EncodedExample([1, 2, 3], [IGNORE_INDEX, 2, 3]), EncodedExample([1, 4], [IGNORE_INDEX, 4])]
    total, count = client.nll("base", examples)
    assert total == pytest.approx(0.2 + 0.3 + 0.4) and count == 3
    # A prompt-logprobs request batched with another one kills vLLM's CPU LoRA engine.
    assert engine.most_in_flight_scoring == 1
    scoring = [b for p, b in engine.calls if p == "/v1/completions"]
    assert all(b["prompt_logprobs"] == 0 and b["max_tokens"] == 1 for b in scoring)


def test_adapters_are_unloaded_whatever_happens_and_stale_ones_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(loaded=("tailor-eval-job1-candidate",))  # left by an earlier attempt
    client = client_for(engine)
    with pytest.raises(RuntimeError), client.adapters({"tailor-eval-job1-candidate": tmp_path, "other": tmp_path}):
        assert engine.adapters == {"tailor-eval-job1-candidate", "other"}
        raise RuntimeError("evaluation failed")
    assert engine.adapters == set()
    loads = [p for p, _ in engine.calls if p.endswith("load_lora_adapter")]
    assert loads.count("/v1/unload_lora_adapter") == 3  # the stale one, then both

    with pytest.raises(TailorError) as info, client.adapters({"a": tmp_path, "b": tmp_path / "broken"}):
        pass
    assert info.value.status == 502 and info.value.code == "engine_adapter_load_failed"
    # The job's tenant reads the message: the engine's URL, the worker's paths and the engine's
    # words stay in the worker's log.
    assert "engine.test" not in info.value.message and str(tmp_path) not in info.value.message
    assert "no adapter_config.json" not in info.value.message
    assert "no adapter_config.json" in caplog.text and "engine.test" in caplog.text
    assert engine.adapters == set()  # the one that did load is unloaded again


def test_a_restarting_engine_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trainer.compute.engine.time.sleep", lambda _s: None)
    engine = FakeEngine(fail_first=2)
    assert client_for(engine).answers("base", [[{"role": "user", "content": "hi"}]], 4) == ["base: hi (4)"]
    engine = FakeEngine(fail_first=10)
    with pytest.raises(TailorError) as info:
        client_for(engine).answers("base", [[{"role": "user", "content": "hi"}]], 4)
    assert info.value.status == 502 and "503" in info.value.message


def test_only_the_requests_own_faults_quote_the_engine(caplog: pytest.LogCaptureFixture) -> None:
    def engine(status: int, message: str) -> EngineClient:
        answer = httpx.Response(status, json={"error": {"message": message}})
        return EngineClient("http://engine.test", "base", transport=httpx.MockTransport(lambda _r: answer))

    prompt = [[{"role": "user", "content": "hi"}]]
    with pytest.raises(TailorError) as info:
        engine(400, "maximum context length is 2048 tokens").answers("base", prompt, 4)
    assert "maximum context length is 2048 tokens" in info.value.message  # the tenant can fix that
    for status, words in ((500, "worker /srv/vllm/shard-3 crashed"), (401, "Incorrect API key provided: sk-ab***yz")):
        with pytest.raises(TailorError) as info:
            engine(status, words).answers("base", prompt, 4)
        assert info.value.status == 502 and str(status) in info.value.message
        assert words not in info.value.message and "engine.test" not in info.value.message
        assert words in caplog.text and "engine.test" in caplog.text
    # vLLM's auth middleware answers {"error": "Unauthorized"}: logged all the same.
    unauthorized = httpx.Response(401, json={"error": "Unauthorized"})
    client = EngineClient("http://engine.test", "base", transport=httpx.MockTransport(lambda _r: unauthorized))
    with pytest.raises(TailorError):
        client.answers("base", prompt, 4)
    assert "Unauthorized" in caplog.text


def test_a_configured_evaluation_engine_that_is_down_is_a_clear_503(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, eval_engine_url="http://127.0.0.1:9", eval_engine_api_key="k")
    engines = WorkerEngines(settings)
    with pytest.raises(TailorError) as info:
        engines.client()
    assert info.value.status == 503 and "TAILOR_EVAL_ENGINE_URL" in info.value.message
    assert "k" not in info.value.message.split()  # the key is never echoed


def test_graded_evaluation_scores_each_sides_answers_with_the_grader(tmp_path: Path) -> None:
    from trainer.compute.evaluation import evaluate_graded
    from trainer.datasets import PromptRecord
    from trainer.graders import GradingContext
    from trainer.rewards import reward_for

    engine = FakeEngine()
    prompts = [
        PromptRecord.from_json({"messages": [{"role": "user", "content": q}], "want": w})
        for q, w in (("alpha", "candidate"), ("beta", "base"), ("gamma", "nothing"))
    ]
    grader = {"type": "string_check", "name": "n", "input": "{{ sample.output_text }}",
              "reference": "{{ item.want }}", "operation": "like"}  # fmt: skip
    comparison, failed = evaluate_graded(
        client_for(engine), prompts, reward_for(grader, GradingContext()),
        candidate_dir=tmp_path / "cand", baseline_dir=None, tag="job1", max_tokens=7,
    )  # fmt: skip
    assert failed == 0
    # the fake answers "<model>: <prompt> (<max_tokens>)": the candidate is the job's adapter
    assert comparison.candidate.grader_score == pytest.approx(1 / 3)
    assert comparison.baseline.grader_score == pytest.approx(1 / 3)
    assert comparison.examples[0].candidate_output == "tailor-eval-job1-candidate: alpha (7)"
    assert comparison.examples[1].baseline_output == "base: beta (7)"
    assert engine.adapters == set()  # loaded for the evaluation only
