"""Tests for adapters.validation's base model spec: the shapes an adapter must fit, read
from the base model's config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.validation import BaseModelSpec
from core.errors import TailorError
from tests.adapters.test_validation import HEADS, HIDDEN, KV_HEADS, LAYERS, SHAPES, tiny_base, tiny_config


@pytest.fixture
def base(tmp_path: Path) -> BaseModelSpec:
    return tiny_base(tmp_path)


def test_base_spec_reads_shapes_from_config(base: BaseModelSpec) -> None:
    assert base.name == "tiny-llama"
    assert base.num_layers == LAYERS
    assert dict(base.module_shapes) == {m: (i, o) for m, (_, i, o) in SHAPES.items()}


def test_base_spec_respects_explicit_head_dim_and_null(tmp_path: Path) -> None:
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "config.json").write_text(json.dumps(tiny_config(head_dim=8)))
    spec = BaseModelSpec.from_config_dir(explicit)
    assert spec.module_shapes["q_proj"] == (HIDDEN, HEADS * 8)
    assert spec.module_shapes["k_proj"] == (HIDDEN, KV_HEADS * 8)
    assert spec.module_shapes["o_proj"] == (HEADS * 8, HIDDEN)

    null = tmp_path / "null"
    null.mkdir()
    (null / "config.json").write_text(json.dumps(tiny_config(head_dim=None)))
    assert BaseModelSpec.from_config_dir(null).module_shapes["q_proj"] == (HIDDEN, HIDDEN)


def test_base_spec_missing_config_is_a_server_error(tmp_path: Path) -> None:
    with pytest.raises(TailorError) as info:
        BaseModelSpec.from_config_dir(tmp_path)
    assert info.value.status == 500


def test_base_spec_is_immutable(base: BaseModelSpec) -> None:
    with pytest.raises(TypeError):
        base.module_shapes["lm_head"] = (1, 1)  # type: ignore[index]
