import json
import shutil

import pytest

from core.errors import StudioError
from core.models.inspect import inspect_model


@pytest.fixture
def model_copy(tmp_path, toy_model):
    return shutil.copytree(toy_model, tmp_path / "m")


def test_a_complete_model_is_described(toy_model):
    info = inspect_model(toy_model)
    assert (info.architecture, info.num_layers) == ("llama", 4)
    assert 100_000 < info.parameter_count < 1_000_000
    assert info.has_module("self_attn.q_proj") and not info.has_module("self_attn.qkv")


def test_sharded_weights_via_index(model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "part-1.safetensors")
    index = {
        "weight_map": {
            "model.embed_tokens.weight": "part-1.safetensors",
            "model.norm.weight": "part-2.safetensors",
        }
    }
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(StudioError, match="part-2.safetensors"):
        inspect_model(model_copy)
    shutil.copy(model_copy / "part-1.safetensors", model_copy / "part-2.safetensors")
    assert inspect_model(model_copy).num_layers == 4


def test_split_shards_must_all_be_there(model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "model-00001-of-00002.safetensors")
    with pytest.raises(StudioError, match="model-00002-of-00002"):
        inspect_model(model_copy)


@pytest.mark.parametrize(
    "remove, message",
    [
        ("config.json", "no config.json"),
        ("tokenizer.json", "no tokenizer"),
        ("model.safetensors", "has no weights"),
    ],
)
def test_missing_parts_are_named(model_copy, remove, message):
    (model_copy / remove).unlink()
    with pytest.raises(StudioError, match=message):
        inspect_model(model_copy)


def test_unreadable_weights(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(StudioError, match="not a readable safetensors"):
        inspect_model(model_copy)


def test_missing_folder(tmp_path):
    with pytest.raises(StudioError, match="does not exist"):
        inspect_model(tmp_path / "nope")
