"""TAILOR_BASE_MODELS (core.base_models): parsed into the bases, the first the default one, and
refused at start-up with words that say what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import ValidationError

from core.config import Settings
from gateway.services import Services
from gateway.trainer_process import settings_env


def test_the_single_base_settings_are_the_one_base(tmp_path: Path) -> None:
    s = Settings(base_model_name="b", base_model_path=tmp_path, engine_urls=["http://e:1"])
    [base] = s.bases
    assert (base.name, base.path, base.engine_urls, base.default) == ("b", tmp_path, ("http://e:1",), True)


def test_the_first_entry_is_the_default_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TAILOR_BASE_MODELS", json.dumps({"small": {"engine_urls": ["http://s:1/"]}, "big": {"path": "/m"}})
    )
    s = Settings()
    assert [(b.name, b.engine_urls, b.default) for b in s.bases] == [
        ("small", ("http://s:1",), True),
        ("big", (), False),
    ]
    assert s.bases[1].path == Path("/m") and s.bases[1].child_engine
    # What fine-tuning, metering and the rest read: the default base.
    assert (s.base_model_name, s.engine_urls) == ("small", ["http://s:1"])
    assert s.base("big") == s.bases[1]
    assert s.base("nope") is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"a/b": {"path": "/m"}}, "no ':', '/' or '@'"),
        ({"x@v1": {"path": "/m"}}, "no ':', '/' or '@'"),
        ({"x": {}}, '"path"'),
        ({"x": {"engine_urls": ["file:///etc"]}}, "http(s) URLs"),
        ({"x": {"path": "/m", "eval_engine_url": "unix:///run/vllm.sock"}}, "http(s) URLs"),
        ({"x": {"path": "/m", "model": "y"}}, "Extra inputs"),
    ],
)
def test_a_bad_base_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch, raw: Any, words: str) -> None:
    monkeypatch.setenv("TAILOR_BASE_MODELS", json.dumps(raw))
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Settings()


def test_a_default_base_named_twice_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_BASE_MODELS", json.dumps({"small": {"path": "/m"}}))
    monkeypatch.setenv("TAILOR_BASE_MODEL_NAME", "other")
    with pytest.raises(ValidationError, match="TAILOR_BASE_MODEL_NAME disagrees"):
        Settings()


def test_each_base_names_its_evaluation_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    bases = {
        "small": {"path": "/s", "eval_engine_url": "http://eval-s:1/", "eval_engine_api_key": "k-s"},
        "big": {"path": "/b", "engine_urls": ["http://serve-b:1"], "eval_engine_url": "http://eval-b:1"},
        "other": {"path": "/o", "engine_urls": ["http://serve-o:1"]},
    }
    monkeypatch.setenv("TAILOR_BASE_MODELS", json.dumps(bases))
    s = Settings()
    # The default entry's is TAILOR_EVAL_ENGINE_URL, as its path is TAILOR_BASE_MODEL_PATH.
    assert (s.eval_engine_url, s.eval_engine_api_key.get_secret_value()) == ("http://eval-s:1", "k-s")  # type: ignore[union-attr]
    assert [b.eval_engine.url if b.eval_engine else None for b in s.bases] == [
        "http://eval-s:1",
        "http://eval-b:1",
        None,  # never its serving engine: a worker starts one on its path
    ]
    monkeypatch.setenv("TAILOR_EVAL_ENGINE_URL", "http://elsewhere:1")
    with pytest.raises(ValidationError, match="TAILOR_EVAL_ENGINE_URL disagrees"):
        Settings()


def test_another_base_gets_a_child_engine_of_its_own(tmp_path: Path) -> None:
    entries = {"small": {"path": str(tmp_path / "s")}, "big": {"path": str(tmp_path / "b")}}
    s = Settings(data_dir=tmp_path, base_models=entries, engine_port=8123)
    services = cast(Services, SimpleNamespace(settings=s))
    default, big = (Services._child_launch(services, base) for base in s.bases)
    assert (default.served_name, default.model_path, default.port) == ("small", (tmp_path / "s").resolve(), 8123)
    assert (big.served_name, big.model_path, big.port) == ("big", (tmp_path / "b").resolve(), 0)
    assert big.log_file != default.log_file


def test_a_base_sends_its_own_engine_key_or_the_common_one(tmp_path: Path) -> None:
    entries = {"a": {"engine_urls": ["http://a:1"], "api_key": "sk-a"}, "b": {"engine_urls": ["http://b:1"]}}
    s = Settings(data_dir=tmp_path, base_models=entries, engine_api_key="sk-all")
    assert [b.api_key.get_secret_value() for b in s.bases if b.api_key] == ["sk-a", "sk-all"]


def test_the_trainer_gets_no_base_engine_key(tmp_path: Path) -> None:
    entries = {
        "small": {"engine_urls": ["http://s:1"], "api_key": "sk-engine"},
        "other": {"path": "m", "engine_urls": ["http://o:1"], "api_key": "sk-other",
                  "eval_engine_url": "http://e:1", "eval_engine_api_key": "sk-eval"},
    }  # fmt: skip
    env = settings_env(Settings(data_dir=tmp_path, base_models=entries))
    # A serving engine's key loads adapters on it and reads every adapter of its base through
    # the gateway: a process running tenants' jobs holds none of them.
    assert "sk-engine" not in json.dumps(env) and "sk-other" not in json.dumps(env)
    bases = json.loads(env["TAILOR_BASE_MODELS"])
    assert bases["small"]["engine_urls"] == ["http://s:1"] and bases["other"]["api_key"] is None
    # The evaluation engine's key stays: the worker evaluates that base's jobs on it.
    assert bases["other"]["eval_engine_api_key"] == "sk-eval"


KEY = "k" * 16


@pytest.mark.parametrize(
    ("bases", "common", "words"),
    [
        # Two operator-run bases on the one common key: each would open the other's adapters.
        ({"a": {"engine_urls": ["http://a:1"]}, "b": {"engine_urls": ["http://b:1"]}}, KEY, "share an engine key"),
        ({"a": {"engine_urls": ["http://a:1"], "api_key": KEY}, "b": {"engine_urls": ["http://b:1"], "api_key": KEY}},
         None, "share an engine key"),
        ({"a": {"engine_urls": ["http://a:1"], "api_key": "short"}}, None, "at least 16 characters"),
        ({"a": {"engine_urls": ["http://a:1"]}}, "", "needs TAILOR_ENGINE_API_KEY"),
    ],
)  # fmt: skip
def test_engines_that_fetch_adapters_each_need_a_long_key_of_their_own(
    tmp_path: Path, bases: dict[str, Any], common: str | None, words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        Settings(data_dir=tmp_path, base_models=bases, engine_adapter_source="url", engine_api_key=common)  # type: ignore[arg-type]
    # A child-engine base gets a random key of its own; one URL base may use the common key.
    fine = {"a": {"engine_urls": ["http://a:1"]}, "c": {"path": "/m"}}
    Settings(data_dir=tmp_path, base_models=fine, engine_adapter_source="url", engine_api_key=KEY)  # type: ignore[arg-type]


def test_an_evaluation_engine_that_serves_is_named(tmp_path: Path) -> None:
    from core.base_models import serving_eval_engines

    bases = {
        "a": {"path": "/a", "engine_urls": ["http://a:1"], "api_key": "serving-a"},
        "by-url": {"path": "/b", "engine_urls": ["http://b:1"], "eval_engine_url": "http://a:1"},
        "by-key": {"path": "/c", "eval_engine_url": "http://e:1", "eval_engine_api_key": "serving-a"},
        "apart": {"path": "/d", "eval_engine_url": "http://e:2", "eval_engine_api_key": "eval-d"},
    }
    assert serving_eval_engines(Settings(data_dir=tmp_path, base_models=bases).bases) == ["by-url", "by-key"]  # type: ignore[arg-type]
