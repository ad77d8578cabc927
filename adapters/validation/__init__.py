"""Decide whether an uploaded PEFT LoRA adapter may be served on Tailor's base model.

An adapter reaches the engine only after this package has accepted it: the directory holds
exactly the files a LoRA adapter needs (safetensors, never pickles), its config asks for
nothing the vLLM serving path lacks, its rank fits the engine's `--max-lora-rank`, and
every tensor has the name and shape the base model's projections require. Everything is
checked from file headers, so a 500 MB upload is judged without loading a weight.

Archives (the API takes .zip, .tar and .tar.gz uploads) are unpacked safely by
adapters.archives before the directory they hold is judged here.

Every refusal is a `TailorError` (400) whose message says what is wrong and what is
allowed, so the same words reach the admin API, the CLI and the logs.

Modules, in the order a directory is judged: `base_model` (the shapes an adapter must fit),
`files` (which files, how large), `lora_config` (adapter_config.json), `tensors` (every
tensor's name, dtype, shape and rank), `adapter_dir` (all of it, for one directory), and
`names` (adapter names).
"""

from __future__ import annotations

from .adapter_dir import AdapterManifest, validate_adapter_dir
from .base_model import MODULE_BLOCKS, BaseModelSpec
from .files import (
    ALLOWED_FILES,
    CONFIG_FILE,
    README_FILE,
    SMALL_FILE_MAX_BYTES,
    WEIGHTS_FILE,
    check_small_file,
    read_safetensors_header,
)
from .names import ADAPTER_NAME_PATTERN, validate_adapter_name

__all__ = [
    "ADAPTER_NAME_PATTERN",
    "ALLOWED_FILES",
    "CONFIG_FILE",
    "MODULE_BLOCKS",
    "README_FILE",
    "SMALL_FILE_MAX_BYTES",
    "WEIGHTS_FILE",
    "AdapterManifest",
    "BaseModelSpec",
    "check_small_file",
    "read_safetensors_header",
    "validate_adapter_dir",
    "validate_adapter_name",
]
