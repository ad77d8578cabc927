"""A fine-tuning file in OpenAI's function-calling format, through the SFT path.

The file is read as the Files API reads it (trainer.files), its examples become the rows the
worker hands the compute side, and SFTTrainer trains a few steps on them. The loss mask with
the real base model's tokenizer shows what is learned: the call blocks and the final answer,
never the tools block or a tool's result.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from tests.trainer.compute.runs import make_recipe, run
from tests.trainer.compute.test_encoding import labelled_text
from tests.trainer.compute.test_methods import assert_servable
from tests.trainer.test_tool_examples import WEATHER
from tests.trainer.test_tool_examples import call as tool_call
from tests.trainer.tiny_models import REAL_MODEL, real_model
from trainer import files
from trainer.compute.encoding import encode_conversation


def line(city: str, celsius: int) -> dict[str, Any]:
    call = tool_call(f"call_{city}", city)
    return {
        "messages": [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"celsius": celsius})},
            {"role": "assistant", "content": f"It is {celsius} degrees in {city}."},
        ],
        "tools": [WEATHER],
    }


TOOL_FILE = "".join(json.dumps(line(c, t)) + "\n" for c, t in [("Paris", 18), ("Rome", 24), ("Oslo", 3), ("Lima", 20)])


def rows() -> list[dict[str, Any]]:
    """The examples as trainer.worker gives the SFT method its rows."""
    return [{"messages": [dict(m) for m in r.messages]} for r in files.parse_jsonl(TOOL_FILE.encode()).records]


def test_a_tool_calling_file_trains_through_sft(tiny_model_dir: Path, tmp_path: Path) -> None:
    r = run(make_recipe(tmp_path, "sft", tiny_model_dir, rows(), max_seq_length=2048))
    assert [s.step for s in r.steps] == [1, 2, 3, 4]
    assert all(math.isfinite(s.loss) for s in r.steps)
    assert (r.result.examples_used, r.result.examples_dropped) == (4, 0)
    assert_servable(Path(r.recipe.out_dir), tiny_model_dir)


@real_model
def test_what_is_learned_from_a_tool_calling_example() -> None:
    tok = AutoTokenizer.from_pretrained(REAL_MODEL)
    [first, *_] = rows()
    encoded = encode_conversation(tok, first["messages"], 2048)
    assert encoded is not None
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert labelled_text(tok, encoded) == f"{call}{tok.eos_token}It is 18 degrees in Paris.{tok.eos_token}"
    text = tok.decode(encoded.input_ids)
    assert "<tools>" in text and '"name": "get_weather", "description"' in text  # context only
    assert '<tool_response>\n{"celsius": 18}\n</tool_response>' in text
