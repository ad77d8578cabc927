"""The probe LoRA that tests an engine's --max-lora-rank is a valid adapter of exactly that rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.probe_adapter import write_probe_adapter
from adapters.validation import BaseModelSpec, validate_adapter_dir
from core.errors import TailorError

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 3,
}


@pytest.fixture
def base(tmp_path: Path) -> BaseModelSpec:
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    return BaseModelSpec.from_config_dir(model)


def test_probe_is_a_valid_adapter_of_exactly_the_rank(tmp_path: Path, base: BaseModelSpec) -> None:
    probe = write_probe_adapter(tmp_path / "probes", base, 16)
    manifest = validate_adapter_dir(probe, base=base, max_rank=16, max_bytes=10_000_000)
    assert manifest.rank == 16
    # One rank less is refused: the probe really has the rank it is named for.
    with pytest.raises(TailorError):
        validate_adapter_dir(probe, base=base, max_rank=15, max_bytes=10_000_000)


def test_probe_is_written_once(tmp_path: Path, base: BaseModelSpec) -> None:
    first = write_probe_adapter(tmp_path / "probes", base, 8)
    stamp = (first / "adapter_model.safetensors").stat().st_mtime_ns
    assert write_probe_adapter(tmp_path / "probes", base, 8) == first
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "probes").iterdir()) == ["rank-8"]  # no work directories left behind
