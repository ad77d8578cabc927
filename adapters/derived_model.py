"""A smaller base model made from another by keeping some of its decoder layers.

    tailor derive-model models/SmolLM2-135M-Instruct models/SmolLM2-15L --keep-layers every-other

The new directory is a Hugging Face model like its source: the kept layers' tensors renumbered
0..k-1 (bit for bit the source's), everything outside the layer stack as it was (embeddings,
final norm, lm_head whether tied or not), config.json with the new `num_hidden_layers` and its
per-layer lists sliced the same way, and the tokenizer, chat template and generation files.
`tailor-derived.json` beside the weights says where it came from: the source's name, path and
digest, and the layers kept. Uses: a second, smaller base model for tests of several base
models, and a distillation student that starts from its teacher's weights.

Weights are copied as bytes (adapters.safetensors_file), so this imports neither torch nor
numpy and keeps every dtype exact. The directory is built beside its target and renamed into
place; a second run with the same source and layers finds it there and does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.layer_selection import select_layers
from adapters.safetensors_file import SafetensorsError, SafetensorsHeader, TensorEntry, read_header, write_file
from adapters.store import StoredFile, digest_files, hash_stream
from core.errors import TailorError, bad_request, conflict

PROVENANCE = "tailor-derived.json"
FORMAT = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Architectures whose decoder layers are all alike, so config.json needs no per-layer list
# to describe them. Others are derived only when config.json lists `layer_types`: without it
# transformers fills in a pattern of its own (Gemma 2 alternates sliding and full attention
# by position) that would describe the kept layers wrongly.
UNIFORM_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Settings that put something at layer positions (dense before MoE layers, MTP layers), with
# the value that puts nothing anywhere. Any other value would move it: refused.
_POSITIONAL: dict[str, Any] = {
    "first_k_dense_replace": 0,
    "moe_layer_freq": 1,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_nextn_predict_layers": 0,
}
# The first "layers.<i>." in a tensor name: its stack ("model.layers") and the layer's index.
_LAYER = re.compile(r"(?P<stack>(?:.+?\.)?layers)\.(?P<index>\d+)\.(?P<rest>.+)")
# Weights in other formats are not copied: they would still hold every source layer.
_OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")


@dataclass(frozen=True)
class Derivation:
    out: Path
    source: Path
    source_layers: int
    kept: tuple[int, ...]
    source_digest: str
    weights_bytes: int
    written: bool  # False: `out` already held this derivation and was left alone


def derive_model(
    source: Path | str, out: Path | str, keep: str | Sequence[int] = "every-other", *, force: bool = False
) -> Derivation:
    """Write `out`, the model at `source` with only the layers `keep` names (adapters.layer_selection)."""
    source, out = Path(source).resolve(), Path(out).resolve()
    _check_places(source, out)
    config = _read_config(source)
    num_layers = config["num_hidden_layers"]
    kept = select_layers(keep, num_layers)
    new_config, sliced = derive_config(config, kept)
    weight_files = _weight_files(source)
    tensors, metadata = _kept_tensors(_read_headers(source, weight_files), kept, num_layers)
    copied = _copied_files(source, weight_files)
    source_digest = digest_files(_hashed(source, [CONFIG, *weight_files, *copied]))

    def derivation(written: bool) -> Derivation:
        size = sum(entry.nbytes for entry in tensors.values())
        return Derivation(out, source, num_layers, kept, source_digest, size, written)

    existing = _existing(out)
    same = existing is not None and _same(existing, source_digest, kept)
    if same and not force and _intact(out, existing or {}):
        return derivation(False)
    # The same derivation with files missing is rebuilt; another one is only replaced when asked.
    if existing is not None and not same and not force:
        raise conflict(f"{out} holds {_described(existing)}; pass --force to replace it", code="derived_model_exists")
    provenance = {
        "format": FORMAT,
        "source": {"name": source.name, "path": str(source), "digest": source_digest, "num_hidden_layers": num_layers},
        "keep": keep if isinstance(keep, str) else ",".join(map(str, kept)),
        "kept_layers": list(kept),
        "num_hidden_layers": len(kept),
        "sliced_config": sliced,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    work.chmod(0o755)  # mkdtemp makes it private; a model directory is read by engines and trainers
    try:
        _build(work, source, copied, new_config, tensors, metadata, provenance)
        _move_into_place(work, out, source_digest, kept)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return derivation(True)


@dataclass(frozen=True)
class DerivedSize:
    """How much of its source a derivation keeps: decoder layers, and weight bytes in all."""

    source_layers: int
    kept_layers: int
    source_bytes: int
    kept_bytes: int


def layer_count(source: Path | str) -> int:
    """The number of decoder layers of the model at `source` (what a keep-layers spec selects from)."""
    return int(_read_config(Path(source))["num_hidden_layers"])


def derived_size(source: Path | str, keep: str | Sequence[int]) -> DerivedSize:
    """What derive_model(source, ..., keep) would keep, from the weights' headers, writing nothing."""
    source = Path(source)
    num_layers = layer_count(source)
    kept = select_layers(keep, num_layers)
    headers = _read_headers(source, _weight_files(source))
    tensors, _ = _kept_tensors(headers, kept, num_layers)
    every = sum(entry.nbytes for header in headers for entry in header.tensors.values())
    return DerivedSize(num_layers, len(kept), every, sum(entry.nbytes for entry in tensors.values()))


def derive_config(config: Mapping[str, Any], kept: Sequence[int]) -> tuple[dict[str, Any], list[str]]:
    """The derived model's config.json and the names of the per-layer lists sliced to `kept`."""
    num_layers = config["num_hidden_layers"]
    model_type = config.get("model_type")
    layer_types = config.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list) or len(layer_types) != num_layers):
        raise _unsupported(f"its layer_types does not have one entry for each of its {num_layers} layers")
    if layer_types is None and model_type not in UNIFORM_MODEL_TYPES:
        raise _unsupported(
            f"model_type {model_type!r} may differ from layer to layer and config.json has no layer_types saying how "
            f"(derivable as they are: {', '.join(sorted(UNIFORM_MODEL_TYPES))})"
        )
    if layer_types is None and config.get("use_sliding_window"):
        raise _unsupported("use_sliding_window places sliding attention by layer position and there is no layer_types")
    for key, neutral in _POSITIONAL.items():
        if config.get(key) not in (None, neutral):
            raise _unsupported(f"{key}={config[key]!r} places parts of the model by layer position")
    # One entry per layer, by name ("layer_types", "no_rope_layers"): a list that only happens
    # to be as long (token ids) is not the layers'.
    sliced = sorted(
        key for key, value in config.items() if "layer" in key and isinstance(value, list) and len(value) == num_layers
    )
    new = dict(config)
    new["num_hidden_layers"] = len(kept)
    for key in sliced:
        new[key] = [config[key][i] for i in kept]
    return new, sliced


def read_provenance(model_dir: Path | str) -> dict[str, Any] | None:
    """What `tailor-derived.json` in `model_dir` says; None when there is none."""
    try:
        data = json.loads((Path(model_dir) / PROVENANCE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- reading the source -------------------------------------------------------------


def _check_places(source: Path, out: Path) -> None:
    if not source.is_dir():
        raise bad_request(f"{source} is not a directory", code="invalid_model", param="source")
    if out == source or source in out.parents or out in source.parents:
        raise bad_request(f"{out} would overlap the source model {source}", code="invalid_model", param="out")


def _read_config(source: Path) -> dict[str, Any]:
    try:
        config = json.loads((source / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _invalid_model(f"{source} has no {CONFIG}: not a Hugging Face model directory") from None
    except (OSError, ValueError) as exc:
        raise _invalid_model(f"{source / CONFIG} cannot be read: {exc}") from None
    layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise _unsupported("its config.json has no positive num_hidden_layers at the top (a decoder-only text model)")
    return config  # type: ignore[no-any-return]


def _weight_files(source: Path) -> list[str]:
    """The safetensors files holding the weights: the index's shards, or model.safetensors."""
    if (source / INDEX).is_file():
        try:
            weight_map = json.loads((source / INDEX).read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise _invalid_model(f"{source / INDEX} has no readable weight_map") from None
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).name != shard or not (source / shard).is_file():
                raise _invalid_model(f"{source / INDEX} names a shard that is not in {source}: {shard!r}")
        return [INDEX, *shards]
    if (source / WEIGHTS).is_file():
        return [WEIGHTS]
    raise _unsupported(
        f"it has no {WEIGHTS} or {INDEX}: save it with safetensors (save_pretrained(..., safe_serialization=True))"
    )


def _read_headers(source: Path, weight_files: Sequence[str]) -> list[SafetensorsHeader]:
    headers = []
    for name in weight_files:
        if name.endswith(".safetensors"):
            try:
                headers.append(read_header(source / name))
            except SafetensorsError as exc:
                raise _invalid_model(f"{source / name} is not a readable safetensors file: {exc}") from None
    return headers


def _kept_tensors(
    headers: Sequence[SafetensorsHeader], kept: Sequence[int], num_layers: int
) -> tuple[dict[str, TensorEntry], dict[str, str] | None]:
    """The derived model's tensors by name: the kept layers renumbered, the rest as they are."""
    every: dict[str, TensorEntry] = {}
    for header in headers:
        for name, entry in header.tensors.items():
            if name in every:
                raise _invalid_model(f"tensor {name} is in two weight files of the source")
            every[name] = entry
    stacks: dict[str, set[int]] = {}
    for name in every:
        if match := _LAYER.fullmatch(name):
            stacks.setdefault(match["stack"], set()).add(int(match["index"]))
    # The decoder's stack is the one with exactly num_hidden_layers layers; another (a
    # vision tower's) is copied whole.
    decoders = [stack for stack, indices in stacks.items() if indices == set(range(num_layers))]
    if len(decoders) != 1:
        found = ", ".join(f"{stack} ({len(indices)})" for stack, indices in sorted(stacks.items())) or "none"
        raise _unsupported(f"no single stack of tensors named <prefix>.layers.<i> has its {num_layers} layers: {found}")
    renumber = {old: new for new, old in enumerate(kept)}
    tensors = {}
    for name, entry in every.items():
        match = _LAYER.fullmatch(name)
        if match is None or match["stack"] != decoders[0]:
            tensors[name] = entry
        elif (new := renumber.get(int(match["index"]))) is not None:
            tensors[f"{match['stack']}.{new}.{match['rest']}"] = entry
    metadata = next((h.metadata for h in headers if h.metadata), None)
    return tensors, metadata


def _copied_files(source: Path, weight_files: Iterable[str]) -> list[str]:
    """Tokenizer, chat template, generation config, licence: every other top-level file."""
    skip = {CONFIG, *weight_files}
    return sorted(
        entry.name
        for entry in source.iterdir()
        if entry.is_file()
        and entry.name not in skip
        and not entry.name.startswith(".")
        and not entry.name.endswith(_OTHER_WEIGHTS)
        # Tailor's own records of how the source was made (tailor-prepared.json, ...) are not this model's.
        and not (entry.name.startswith("tailor-") and entry.name.endswith(".json"))
    )


def _hashed(directory: Path, names: Iterable[str]) -> list[StoredFile]:
    files = []
    for name in names:
        with (directory / name).open("rb") as f:
            size, sha = hash_stream(f)
        files.append(StoredFile(name, size, sha))
    return files


# --- writing ------------------------------------------------------------------------


def _build(
    work: Path,
    source: Path,
    copied: Sequence[str],
    config: Mapping[str, Any],
    tensors: Mapping[str, TensorEntry],
    metadata: Mapping[str, str] | None,
    provenance: dict[str, Any],
) -> None:
    write_file(work / WEIGHTS, tensors, metadata)
    (work / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in copied:
        shutil.copyfile(source / name, work / name)
    files = _hashed(work, sorted(p.name for p in work.iterdir()))
    provenance["files"] = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in files]
    # Last: a directory with this file is complete.
    (work / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def _move_into_place(work: Path, out: Path, source_digest: str, kept: Sequence[int]) -> None:
    if not out.exists():
        try:
            os.rename(work, out)
            return
        except OSError:
            # Another run got there first; what it wrote will do if it is the same model.
            theirs = _existing(out)
            if theirs is not None and _same(theirs, source_digest, kept):
                return
            raise
    # Replacing (--force, or an empty directory): move the old one aside, the new one in.
    aside = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
    os.rename(out, aside)
    try:
        os.rename(work, out)
    except OSError:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _existing(out: Path) -> dict[str, Any] | None:
    """`out`'s provenance when it is a derived model; None when it is free to write."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise bad_request(f"{out} exists and is not a directory", code="invalid_model", param="out")
    provenance = read_provenance(out)
    if provenance is None:
        with contextlib.suppress(StopIteration):
            next(out.iterdir())
            raise conflict(
                f"{out} is not empty and is not a derived model (no {PROVENANCE}): not replacing it",
                code="derived_model_exists",
            )
    return provenance


def _same(provenance: Mapping[str, Any], source_digest: str, kept: Sequence[int]) -> bool:
    return (
        provenance.get("format") == FORMAT
        and (provenance.get("source") or {}).get("digest") == source_digest
        and provenance.get("kept_layers") == list(kept)
    )


def _described(provenance: Mapping[str, Any]) -> str:
    source = provenance.get("source")
    if not isinstance(source, dict) or "kept_layers" not in provenance:
        return f"a derived model whose {PROVENANCE} cannot be read"
    return f"a model derived from {source.get('name')} keeping layers {provenance['kept_layers']}"


def _intact(out: Path, provenance: Mapping[str, Any]) -> bool:
    """Every file the provenance lists is there with its size (a cheap check, not a re-hash)."""
    try:
        return all((out / f["name"]).stat().st_size == f["size"] for f in provenance["files"])
    except (OSError, KeyError, TypeError):
        return False


def _invalid_model(message: str) -> TailorError:
    return bad_request(message, code="invalid_model", param="source")


def _unsupported(reason: str) -> TailorError:
    return bad_request(f"cannot derive a model from this source: {reason}", code="unsupported_model")
