"""Property-based tests for the parsers and validators that take untrusted input.

trainer/files/parsing.py `parse_jsonl`, adapters/validation.py `validate_adapter_name`, adapters/archives.py
`extract_archive`, trainer/gates.py `GateConfig.from_dict`, adapters/store.py
`check_digest`: for any input each either accepts it or refuses it with a TailorError
400, never another exception.
"""

from __future__ import annotations

import io
import json
import re
import struct
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.archives import extract_archive
from adapters.store import check_digest
from adapters.validation import ADAPTER_NAME_PATTERN, validate_adapter_name
from core.errors import TailorError
from trainer.files import Kind, ParsedFile, parse_jsonl
from trainer.gates import NOISE_KEYS, PRIMARY_METRICS, GateConfig

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ JSON strategies

_text = st.text(max_size=12)
# Python's json parses integers of any size (up to sys.get_int_max_str_digits digits).
_ints = st.one_of(st.integers(), st.integers(-3, 3), st.sampled_from([10**20, -(10**20), 10**400, 2**1024]))
_floats = st.floats(allow_nan=False, allow_infinity=False)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _text)


def _json_values(keys: st.SearchStrategy[str], words: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.one_of(_scalars, words),
        lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
        max_leaves=15,
    )


def _status_400(exc: TailorError) -> None:
    assert exc.status == 400, exc
    assert exc.message
    assert exc.body()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------ parse_jsonl

_ROLE_WORDS = st.sampled_from(["system", "user", "assistant", "tool", "developer", "", "Hi", " ", "\u00a0"])
_FILE_KEYS = st.sampled_from(
    ["messages", "role", "content", "input", "preferred_output", "non_preferred_output", "weight", "tools",
     "functions", "parallel_tool_calls", "tool_calls", "refusal", "name"]
)  # fmt: skip
_file_values = _json_values(st.one_of(_FILE_KEYS, _text), st.one_of(_ROLE_WORDS, _text))
_message = st.fixed_dictionaries(
    {"role": st.one_of(_ROLE_WORDS, _file_values), "content": st.one_of(_text, _ROLE_WORDS, _file_values)},
    optional={"weight": st.sampled_from([0, 1, 1.0, True, None, 2])},
)
_messages = st.lists(_message, min_size=0, max_size=4)
_example = st.one_of(
    st.fixed_dictionaries({"messages": _messages}),
    st.fixed_dictionaries(
        {
            "input": st.fixed_dictionaries({"messages": _messages}),
            "preferred_output": _messages,
            "non_preferred_output": _messages,
        }
    ),
    st.dictionaries(st.one_of(_FILE_KEYS, _text), _file_values, max_size=4),
    _file_values,
)
_valid_sft = st.builds(
    lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
    _text,
    _text.filter(str.strip),
)


def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


_line_bytes = st.one_of(
    st.one_of(_example, _valid_sft).map(_line),
    st.binary(max_size=30),
    st.sampled_from([b"", b"   ", b"\r", b"\xef\xbb\xbf", b"{", b"[]", b"null", b"\xff", b"NaN"]),
)
jsonl_files = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.booleans(), st.lists(_line_bytes, max_size=6), st.sampled_from([b"\n", b"\r\n"])).map(
        lambda t: (b"\xef\xbb\xbf" if t[0] else b"") + t[2].join(t[1])
    ),
)
_LINE_MESSAGE = re.compile(r"line (\d+)(: |:$| )")


def _check_parse(data: bytes, max_lines: int = 100_000) -> None:
    try:
        parsed = parse_jsonl(data, max_lines=max_lines)
    except TailorError as exc:
        _status_400(exc)
        assert exc.param == "file"
        if exc.code in ("empty_file", "file_too_large"):
            return  # whole-file refusals name no line
        named = _LINE_MESSAGE.match(exc.message)
        assert named, exc.message
        assert 1 <= int(named.group(1)) <= data.count(b"\n") + 1
        return
    assert isinstance(parsed, ParsedFile)
    assert parsed.kind in get_args(Kind)
    body = data.removeprefix(b"\xef\xbb\xbf")
    assert len(parsed.records) == sum(1 for raw in body.split(b"\n") if raw.strip())


@SETTINGS
@given(data=jsonl_files, max_lines=st.sampled_from([1, 2, 100_000]))
@example(data=b'{"messages":[{"role":"user","content":""}]}', max_lines=1)  # a prompts file
def test_parse_jsonl_accepts_or_names_the_line(data: bytes, max_lines: int) -> None:
    _check_parse(data, max_lines)


@SETTINGS
@given(lines=st.lists(_valid_sft.map(_line), min_size=1, max_size=5), blank=st.sampled_from([b"", b" ", b"\t"]))
def test_parse_jsonl_valid_files_keep_every_example(lines: list[bytes], blank: bytes) -> None:
    parsed = parse_jsonl(b"\n".join(lines) + b"\n" + blank + b"\n")
    assert parsed.kind == "sft"
    assert len(parsed.records) == len(lines)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,  # RecursionError: maximum recursion depth exceeded
        b'{"messages": ' + b"1" * 5000 + b"}",  # ValueError: Exceeds the limit (4300 digits)
    ],
    ids=["deep-nesting", "long-integer"],
)
def test_regression_parse_jsonl_json_errors_escape(data: bytes) -> None:
    _check_parse(data)


# ------------------------------------------------------------------ validate_adapter_name

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_name_chars = st.sampled_from("abcxyz0129._-:/ AZ\n\x00éß\u212a")
adapter_names = st.one_of(
    st.from_regex(_NAME_RE, fullmatch=True),
    st.text(_name_chars, max_size=70),
    st.text(max_size=70),
    st.from_regex(_NAME_RE, fullmatch=True).map(lambda s: s + "\n"),
    st.from_regex(_NAME_RE, fullmatch=True).map(str.upper),
)


@SETTINGS
@given(name=adapter_names)
@example(name="a" * 63)
@example(name="a" * 64)
@example(name="\u212a")  # KELVIN SIGN lowercases to ASCII "k"
def test_validate_adapter_name_is_exactly_the_pattern(name: str) -> None:
    valid = _NAME_RE.fullmatch(name) is not None
    try:
        got = validate_adapter_name(name)
    except TailorError as exc:
        _status_400(exc)
        assert exc.code == "invalid_adapter_name" and exc.param == "name"
        assert not valid, f"refused a valid name {name!r}"
    else:
        assert valid, f"accepted an invalid name {name!r}"
        assert got is name


def test_adapter_name_oracle_is_the_documented_pattern() -> None:
    # The property's oracle must be the pattern the module documents, not a copy that drifts.
    assert f"^{_NAME_RE.pattern}$" == ADAPTER_NAME_PATTERN


@pytest.mark.parametrize("name", [None, 1, b"abc", ["abc"]])
def test_validate_adapter_name_refuses_non_strings(name: Any) -> None:
    with pytest.raises(TailorError) as info:
        validate_adapter_name(name)
    _status_400(info.value)


# ------------------------------------------------------------------ check_digest

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
digests = st.one_of(
    st.from_regex(_DIGEST_RE, fullmatch=True),
    st.text(st.sampled_from("0123456789abcdefABCDEF/.\n g"), min_size=60, max_size=68),
    st.from_regex(_DIGEST_RE, fullmatch=True).map(lambda s: s + "\n"),
    st.text(max_size=80),
    st.one_of(st.none(), st.integers(), st.binary(max_size=64), st.lists(st.integers(), max_size=2)),
)


@SETTINGS
@given(digest=digests)
def test_check_digest_accepts_exactly_sha256_hex(digest: Any) -> None:
    valid = isinstance(digest, str) and _DIGEST_RE.fullmatch(digest) is not None
    try:
        got = check_digest(digest)
    except TailorError as exc:
        _status_400(exc)
        assert exc.code == "invalid_digest" and exc.param == "digest"
        assert not valid
    else:
        assert valid and got is digest


# ------------------------------------------------------------------ GateConfig.from_dict

_GATE_KEYS = st.sampled_from(["primary_metric", "min_improvement", "noise", "min_examples", *NOISE_KEYS])
_gate_values = _json_values(st.one_of(_GATE_KEYS, _text), st.sampled_from([*PRIMARY_METRICS, "bleu", ""]))
_numbers = st.one_of(_ints, _floats, st.booleans(), st.none(), _text)
gate_dicts = st.one_of(
    st.none(),
    _gate_values,
    st.dictionaries(st.one_of(_GATE_KEYS, _text), _gate_values, max_size=5),
    st.fixed_dictionaries(
        {},
        optional={
            "primary_metric": st.one_of(st.sampled_from([*PRIMARY_METRICS, "bleu"]), _gate_values),
            "min_improvement": _numbers,
            "noise": st.one_of(st.dictionaries(st.one_of(_GATE_KEYS, _text), _numbers, max_size=4), _gate_values),
            "min_examples": _numbers,
        },
    ),
)
# Integers beyond float range once overflowed (test_regression_gate_number_overflows);
# the property now draws them too.
_FLOATABLE = 2**1100


def _floatable_numbers(d: Any) -> Any:
    if not isinstance(d, dict):
        return d

    def fix(v: Any) -> Any:
        return 0 if type(v) is int and abs(v) >= _FLOATABLE else v

    out = {k: fix(v) for k, v in d.items()}
    if isinstance(out.get("noise"), dict):
        out["noise"] = {k: fix(v) for k, v in out["noise"].items()}
    return out


@SETTINGS
@given(d=gate_dicts.map(_floatable_numbers))
def test_gate_config_from_dict_builds_or_refuses(d: Any) -> None:
    try:
        gates = GateConfig.from_dict(d)
    except TailorError as exc:
        _status_400(exc)
        assert exc.param and exc.param.startswith("gates")
        return
    assert gates.primary_metric in PRIMARY_METRICS
    assert gates.min_improvement >= 0 and gates.min_examples >= 1
    assert set(gates.noise) == set(NOISE_KEYS)
    assert all(v >= 0 for v in gates.noise.values())
    # What to_dict writes reads back as the same config (policies are stored that way).
    assert GateConfig.from_dict(json.loads(json.dumps(gates.to_dict()))) == gates


@pytest.mark.parametrize("d", [{"min_improvement": 10**400}, {"noise": {"exact_match": 2**1024}}])
def test_regression_gate_number_overflows(d: dict[str, Any]) -> None:
    # json.loads("1" + "0" * 400) is such an int; the API would answer 500, not 400.
    with pytest.raises(TailorError):
        GateConfig.from_dict(d)


# ------------------------------------------------------------------ extract_archive


def _adapter_files() -> dict[str, bytes]:
    return {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"\x08" + b"\x00" * 15}


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _adapter_files().items():
            zf.writestr(f"adapter/{name}", data)
    return buf.getvalue()


def _tar_bytes(mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in _adapter_files().items():
            info = tarfile.TarInfo(f"adapter/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_VALID_ARCHIVES = [_zip_bytes(), _tar_bytes("w"), _tar_bytes("w:gz")]


@st.composite
def _mutated_archive(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_VALID_ARCHIVES)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


_MAGICS = [b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]
archives = st.one_of(
    st.binary(max_size=600),
    st.tuples(st.sampled_from(_MAGICS), st.binary(max_size=600)).map(b"".join),
    # a tar header's "ustar" magic at offset 257, random around it
    st.tuples(st.binary(min_size=257, max_size=257), st.binary(max_size=600)).map(lambda t: t[0] + b"ustar" + t[1]),
    _mutated_archive(),
)


# Reader errors of corrupt archives are 400s now (test_regression_extract_archive_...);
# no other exception is tolerated.
_KNOWN_BUG_EXCEPTIONS: tuple[type[BaseException], ...] = ()


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _check_extract(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        archive = root / "upload.bin"
        archive.write_bytes(data)
        dest = root / "work" / "out"
        before = _snapshot(root)
        try:
            got = extract_archive(archive, dest, max_bytes=10_000)
        except _KNOWN_BUG_EXCEPTIONS:
            # Still must not leave anything behind, in dest or outside it.
            assert not dest.exists() or not any(dest.iterdir()), "a failed extraction left files behind"
        except TailorError as exc:
            _status_400(exc)
            assert exc.code in ("invalid_archive", "adapter_too_large"), exc.code
            # Refused before or after creating dest; either way nothing is left in it.
            assert not dest.exists() or not any(dest.iterdir()), "a refused archive left files behind"
        else:
            # A mutation that leaves the archive readable may legitimately succeed.
            assert got.resolve().is_relative_to(dest.resolve())
            assert (got / "adapter_config.json").is_file()
        outside = {p for p in _snapshot(root) - before if not (root / p).resolve().is_relative_to(dest.resolve())}
        assert outside <= {"work", "work/out"}, f"wrote outside dest: {outside}"
        assert archive.read_bytes() == data


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=archives)
def test_extract_archive_random_bytes_refused_with_400(data: bytes) -> None:
    _check_extract(data)


def _patched_zip(field: str) -> bytes:
    data = bytearray(_VALID_ARCHIVES[0])
    if field == "version needed":  # first central-directory entry, "version needed to extract"
        cd = data.index(b"PK\x01\x02")
        data[cd + 6 : cd + 8] = struct.pack("<H", 255)
    else:  # end-of-central-directory "offset of central directory", 1000 too far
        eocd = data.rindex(b"PK\x05\x06")
        (offset,) = struct.unpack("<I", data[eocd + 16 : eocd + 20])
        data[eocd + 16 : eocd + 20] = struct.pack("<I", offset + 1000)
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x1f\x8b\x08",  # TypeError: ord() of b"" in tarfile's gzip-header reader
        _patched_zip("version needed"),  # NotImplementedError: zip file version 25.5
        _patched_zip("central directory offset"),  # OSError: [Errno 22] (negative seek)
    ],
    ids=["gzip-header-cut", "zip-version", "zip-negative-offset"],
)
def test_regression_extract_archive_reader_errors_escape(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "upload.bin"
        archive.write_bytes(data)
        with pytest.raises(TailorError) as info:
            extract_archive(archive, Path(tmp) / "out", max_bytes=10_000)
        _status_400(info.value)


@pytest.mark.parametrize("data", _VALID_ARCHIVES, ids=["zip", "tar", "tar.gz"])
def test_extract_archive_unmutated_archives_extract(data: bytes) -> None:
    _check_extract(data)  # the seeds of the mutation strategy are themselves accepted
