"""Tests for adapters.validation's adapter names: what a tenant may call an adapter."""

from __future__ import annotations

import pytest

from adapters.validation import validate_adapter_name
from core.errors import TailorError


@pytest.mark.parametrize("name", ["support", "a", "team-1.v2_final", "0day", "x" * 63])
def test_valid_adapter_names(name: str) -> None:
    assert validate_adapter_name(name) == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", "must not be empty"),
        ("Support", "'support'"),
        ("acme:support", "':' or '/'"),
        ("acme/support", "':' or '/'"),
        ("-support", "starting with a letter or digit"),
        (".hidden", "starting with a letter or digit"),
        ("has space", "is invalid"),
        ("x" * 64, "at most 63 characters"),
        ("émoji", "is invalid"),
    ],
)
def test_invalid_adapter_names(name: str, expected: str) -> None:
    with pytest.raises(TailorError) as info:
        validate_adapter_name(name)
    assert info.value.status == 400 and info.value.param == "name"
    assert expected in info.value.message
    assert "^[a-z0-9][a-z0-9._-]{0,62}$" in info.value.message
