"""Adapter management on real adapters: rename, delete, export/import, mlx-lm imports, fuse."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import mlx.core as mx
import pytest
from mlx_lm import generate, load

from core.adapters.layout import METADATA_FILE, WEIGHTS_FILE
from core.adapters.store import AdapterStore, check_adapter_id
from core.errors import StudioError
from core.models.inspect import inspect_model
from core.models.toy import build_toy_llama
from core.serve.registry import ModelRegistry
from tests.helpers import colour_rows, lora_studio, small_filesystem, write_jsonl


@pytest.fixture
def store(studio, trained_adapter):
    """A store holding one copy of the session's trained adapter."""
    shutil.copytree(trained_adapter, studio.adapters / trained_adapter.name)
    return AdapterStore(studio.adapters)


def only_id(store):
    [adapter] = store.list()
    return adapter.id


def same_weights(a, b) -> bool:
    wa, wb = mx.load(str(a / WEIGHTS_FILE)), mx.load(str(b / WEIGHTS_FILE))
    return wa.keys() == wb.keys() and all(mx.array_equal(wa[k], wb[k]).item() for k in wa)


def test_list_and_read(store):
    [adapter] = store.list()
    assert adapter.name == "Colours" and adapter.problem is None
    assert store.read(adapter.id).metadata.baseModelId == "toy"


def test_rename_rewrites_the_name_only_and_keeps_unknown_fields(store):
    adapter_id = only_id(store)
    meta_file = store.path(adapter_id) / METADATA_FILE
    data = json.loads(meta_file.read_text())
    data["samOnlyField"] = {"kept": True}
    meta_file.write_text(json.dumps(data))
    store.rename(adapter_id, "  Pirate   colours ")
    after = json.loads(meta_file.read_text())
    assert after.pop("adapterName") == "Pirate colours"
    data.pop("adapterName")
    assert after == data
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(StudioError):
            store.rename(adapter_id, bad)
    assert not list(meta_file.parent.glob(".*.tmp"))  # no temporary file left behind


def test_delete_and_the_registry_drops_it(store, studio, tmp_path):
    adapter_id = only_id(store)
    registry = ModelRegistry(studio, hub=tmp_path / "none")
    assert f"lora/{adapter_id}" in [e.id for e in registry.entries()]
    store.delete(adapter_id)
    assert store.list() == [] and list(studio.adapters.iterdir()) == []
    registry.reload()
    assert f"lora/{adapter_id}" not in [e.id for e in registry.entries()]


def test_ids_from_outside_are_checked(store):
    for bad in ("../adapters", "lora/../../etc", "/etc/passwd", "", "a" * 36):
        with pytest.raises(StudioError, match="not an adapter id"):
            check_adapter_id(bad)
        with pytest.raises(StudioError):
            store.path(bad)
    assert check_adapter_id(f"lora/{only_id(store)}") == only_id(store)


def test_export_then_import_gives_the_same_weights(store, tmp_path):
    original = store.path(only_id(store))
    archive = store.export(only_id(store), tmp_path / "colours.zip")
    with zipfile.ZipFile(archive) as zf:
        assert {"adapters.safetensors", "adapter_config.json", "metadata.json"} <= set(
            zf.namelist()
        )
    new_id = store.import_zip(archive)
    assert new_id != original.name
    assert same_weights(original, store.path(new_id))
    assert store.read(new_id).metadata.adapterName == "Colours"


def test_import_a_folder_made_by_mlx_lm_lora(store, studio, toy_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", colour_rows(16))
    write_jsonl(data / "valid.jsonl", colour_rows(4, seed=1))
    made = tmp_path / "mlx-lm-adapter"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "lora",
            "--model",
            str(toy_model),
            "--train",
            "--data",
            str(data),
            "--iters",
            "4",
            "--num-layers",
            "2",
            "--adapter-path",
            str(made),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    base = inspect_model(toy_model)
    with pytest.raises(StudioError, match="no metadata.json") as caught:
        store.import_folder(made)
    assert "base model" in caught.value.hint
    new_id = store.import_folder(made, base=base, name="From mlx-lm")
    meta = store.read(new_id).metadata
    assert (meta.adapterName, meta.baseModelId, meta.loraLayers) == ("From mlx-lm", "toy", 2)
    model, tokenizer = load(str(toy_model), adapter_path=str(store.path(new_id)))
    imported = generate(model, tokenizer, prompt="the sky is", max_tokens=6)
    model, tokenizer = load(str(toy_model), adapter_path=str(made))
    assert imported == generate(model, tokenizer, prompt="the sky is", max_tokens=6)


def test_import_checks_tensors_against_the_base(store, tmp_path):
    other = inspect_model(build_toy_llama(tmp_path / "wider", hidden_size=96, num_heads=4))
    archive = store.export(only_id(store), tmp_path / "a.zip")
    with pytest.raises(StudioError, match="does not fit wider") as caught:
        store.import_zip(archive, base=other)
    assert "self_attn.q_proj.lora_a: shape [64, 8], wider needs [96, 8]" in caught.value.message
    assert len(store.list()) == 1  # nothing was added


def test_hostile_archives_are_refused_and_write_nothing(store, studio, tmp_path, monkeypatch):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("adapter_config.json", "{}")
        zf.writestr("../../escaped.txt", "gotcha")
    with pytest.raises(StudioError, match="unsafe path"):
        store.import_zip(evil)
    assert not (studio.home / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    not_zip = tmp_path / "fake.zip"
    not_zip.write_text("hello")
    with pytest.raises(StudioError, match="not a valid .zip"):
        store.import_zip(not_zip)
    monkeypatch.setattr("core.adapters.store.MAX_IMPORT_BYTES", 1000)
    with pytest.raises(StudioError, match="too large"):
        store.import_zip(store.export(only_id(store), tmp_path / "big.zip"))
    assert len(store.list()) == 1
    assert [p.name for p in studio.adapters.iterdir()] == [only_id(store)]  # no staging left


def test_fuse_gives_a_base_model_that_answers_like_base_plus_adapter(store, studio, toy_model):
    adapter_id = only_id(store)
    fused = store.fuse(adapter_id, inspect_model(toy_model), studio.models, "toy-colours")
    prompt = "What colour is the sky number 3?"
    with_adapter, tokenizer = load(str(toy_model), adapter_path=str(store.path(adapter_id)))
    fused_model, _ = load(str(fused))
    assert generate(fused_model, tokenizer, prompt=prompt, max_tokens=10) == generate(
        with_adapter, tokenizer, prompt=prompt, max_tokens=10
    )
    registry = ModelRegistry(studio, hub=studio.home / "none")
    assert registry.get("toy-colours").available
    with pytest.raises(StudioError, match="already exists"):
        store.fuse(adapter_id, inspect_model(toy_model), studio.models, "toy-colours")


def test_an_imported_archive_cannot_choose_what_the_studio_loads(store, toy_model, tmp_path):
    """A zip whose metadata.json points at another folder, with extra members: the path is
    dropped (the base is found by id, or the one picked) and only adapter files are kept."""
    adapter_id = only_id(store)
    archive = store.export(adapter_id, tmp_path / "a.zip")
    elsewhere = tmp_path / "elsewhere-model"
    with zipfile.ZipFile(archive) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    meta_name = next(n for n in members if n.endswith(METADATA_FILE))
    meta = json.loads(members[meta_name])
    meta["baseModelPath"] = str(elsewhere)
    members[meta_name] = json.dumps(meta).encode()
    members[meta_name.replace(METADATA_FILE, "run-me.sh")] = b"#!/bin/sh\necho pwned\n"
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)

    imported = store.import_zip(hostile)
    folder = store.path(imported)
    assert {p.name for p in folder.iterdir()} <= {
        "adapters.safetensors",
        "adapter_config.json",
        "metadata.json",
        "events.jsonl",
    }
    meta = store.read(imported).metadata
    assert meta.baseModelPath is None and meta.baseModelId == "toy"  # found by id, if here
    base = inspect_model(toy_model)
    picked = store.read(store.import_zip(hostile, base=base)).metadata
    assert (picked.baseModelId, picked.baseModelPath) == (base.id, str(base.path))


def test_a_failed_export_leaves_no_partial_file(store, tmp_path):
    with small_filesystem(tmp_path / "small", "16k") as folder:
        with pytest.raises(StudioError, match="export .* failed"):
            store.export(only_id(store), folder / "a.zip")
        assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "config",
    [b"{not json", b"[1, 2]", b'{"lora_parameters": 5}', b"\xff\xfe", b'{"peft_type": 1', b"7"],
)
def test_an_archive_with_a_bad_adapter_config_is_refused_by_name(
    store, studio, toy_model, tmp_path, config
):
    """From the command line too: exit 2, a sentence naming the file, no traceback."""
    good = store.export(only_id(store), tmp_path / "good.zip")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.namelist():
            data = config if item == "adapter_config.json" else source.read(item)
            target.writestr(item, data)
    from core.adapters.export import import_any

    with pytest.raises(StudioError, match="adapter_config.json"):
        import_any(bad, store, inspect_model(toy_model), "x")
    assert len(store.list()) == 1
    shutil.copytree(toy_model, studio.models / "toy")
    done = lora_studio("import", str(bad), "--base", "toy", home=studio.home)
    assert done.returncode == 2 and "adapter_config.json" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
