"""A full fine-tune's result and checkpoints are whole models a server can take as they are."""

from __future__ import annotations

from pathlib import Path

from adapters.checkpoints import store_checkpoint
from adapters.store import AdapterStore
from adapters.validation import BaseModelSpec
from adapters.version_files import validate_version_dir
from core.states import VersionKind
from tests.trainer.compute.runs import make_recipe, run
from tests.trainer.compute.test_methods import SFT_ROWS


def test_a_full_fine_tune_saves_servable_models_with_their_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = make_recipe(
        tmp_path, "sft", tiny_model_dir, SFT_ROWS, full_parameters=True, max_steps=2, checkpoint_every=1
    )
    done = run(recipe)
    base = BaseModelSpec.from_config_dir(tiny_model_dir)
    limits = {"base": base, "max_rank": 64, "max_bytes": 1 << 30, "max_model_bytes": 1 << 30}
    for model_dir in (Path(done.recipe.out_dir), *(path for _, _, path in done.checkpoints)):
        names = {p.name for p in model_dir.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= names, names
        assert validate_version_dir(model_dir, **limits).kind == VersionKind.MODEL
    # A checkpoint of a full fine-tune is stored as the whole model it is.
    store = AdapterStore(str(tmp_path / "store"), tmp_path / "cache")
    digest = store_checkpoint(store, done.checkpoints[0][2], **limits)
    assert (store.local_path(digest) / "model.safetensors").is_file()
