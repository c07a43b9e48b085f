"""The registry with the real watchdog observer on real folders."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from core.adapters.layout import METADATA_FILE, WEIGHTS_FILE
from core.errors import StudioError
from core.params import TrainingParams
from core.serve.registry import ModelRegistry
from core.train.service import TrainingService


@pytest.fixture
def registry(studio, toy_model, tmp_path):
    shutil.copytree(toy_model, studio.models / "toy")
    with ModelRegistry(studio, hub=tmp_path / "no-hub") as registry:
        yield registry


def wait_for(condition, timeout=5.0) -> float:
    """Seconds until ``condition()`` holds; fails the test after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail("the registry did not catch up in time")
        time.sleep(0.005)
    return time.monotonic() - start


def publish(studio, template: Path, base_path: Path | None = None) -> str:
    """Publish a copy of ``template`` the way the training service does: one rename."""
    adapter_id = str(uuid.uuid4())
    staging = studio.runs / adapter_id
    shutil.copytree(template, staging)
    if base_path is not None:
        meta = json.loads((staging / METADATA_FILE).read_text())
        meta.update(baseModelId=base_path.name, baseModelPath=str(base_path))
        (staging / METADATA_FILE).write_text(json.dumps(meta))
    staging.rename(studio.adapters / adapter_id)
    return f"lora/{adapter_id}"


def ids(registry):
    return [e.id for e in registry.entries()]


def test_base_models_are_listed(registry):
    [entry] = registry.entries()
    assert (entry.id, entry.kind, entry.available) == ("toy", "base", True)


def test_an_adapter_published_by_training_appears_by_itself(registry, studio, colour_dataset):
    seen = threading.Event()
    registry.subscribe(lambda r: any(e.kind == "adapter" for e in r.entries()) and seen.set())
    run = TrainingService(studio).start(
        studio.models / "toy", colour_dataset, TrainingParams(epochs=1, lora_layers=-1)
    )
    assert run.wait(timeout=120).type == "complete"
    assert seen.wait(timeout=2)
    entry = registry.get(f"lora/{run.id}")
    assert entry.available and entry.base_id == "toy"
    assert entry.display_name == "Trained on colours.jsonl (LoRA on toy)"


def test_a_publish_is_listed_by_itself(registry, studio, trained_adapter):
    """(How fast: bench/hot_reload.py measures it; a test must not race the clock.)"""
    for _ in range(3):
        version = registry.version
        model_id = publish(studio, trained_adapter, studio.models / "toy")
        wait_for(lambda: model_id in ids(registry))  # noqa: B023
        assert registry.version > version


def test_missing_base_makes_adapters_unavailable_until_it_returns(
    registry, studio, tmp_path, trained_adapter
):
    model_id = publish(studio, trained_adapter, studio.models / "toy")
    wait_for(lambda: registry.get(model_id).available if model_id in ids(registry) else False)
    (studio.models / "toy").rename(tmp_path / "toy-away")
    wait_for(lambda: not registry.get(model_id).available)
    assert "base model toy not found" in registry.get(model_id).reason
    (tmp_path / "toy-away").rename(studio.models / "toy")
    wait_for(lambda: registry.get(model_id).available)


def test_broken_adapters_are_unavailable_without_disturbing_others(
    registry, studio, trained_adapter
):
    good, bad_weights, bad_meta = (
        publish(studio, trained_adapter, studio.models / "toy") for _ in range(3)
    )
    wait_for(lambda: {good, bad_weights, bad_meta} <= set(ids(registry)))
    (studio.adapters / bad_weights.removeprefix("lora/") / WEIGHTS_FILE).write_bytes(b"junk")
    (studio.adapters / bad_meta.removeprefix("lora/") / METADATA_FILE).write_text("{oops")
    wait_for(lambda: not registry.get(bad_meta).available)
    wait_for(lambda: not registry.get(bad_weights).available)
    assert "unreadable" in registry.get(bad_weights).reason
    assert "metadata.json is invalid" in registry.get(bad_meta).reason
    assert registry.get(good).available and registry.get("toy").available


def test_a_folder_without_metadata_is_ignored_until_it_has_one(registry, studio, trained_adapter):
    folder = studio.adapters / str(uuid.uuid4())
    folder.mkdir()
    shutil.copy(trained_adapter / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    shutil.copy(trained_adapter / "adapter_config.json", folder / "adapter_config.json")
    scans = registry.scans
    (studio.models / "trigger").mkdir()  # a change after those: once it is seen, they were too
    wait_for(lambda: registry.scans > scans and "trigger" in ids(registry))
    assert f"lora/{folder.name}" not in ids(registry)
    meta = json.loads((trained_adapter / METADATA_FILE).read_text())
    meta["baseModelPath"] = str(studio.models / "toy")
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    wait_for(lambda: f"lora/{folder.name}" in ids(registry))


def test_base_found_by_its_recorded_path_and_in_the_hub_cache(
    studio, toy_model, tmp_path, trained_adapter
):
    outside = shutil.copytree(toy_model, tmp_path / "elsewhere" / "my-base")
    hub = tmp_path / "hub"
    snapshot = hub / "models--org--tiny" / "snapshots" / "abc123"
    shutil.copytree(toy_model, snapshot)
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text("abc123")
    not_mlx = hub / "models--org--bert" / "snapshots" / "1"
    not_mlx.mkdir(parents=True)
    (not_mlx / "config.json").write_text('{"model_type": "no-such-architecture"}')
    model_id = publish(studio, trained_adapter, outside)
    registry = ModelRegistry(studio, hub=hub)
    assert ids(registry) == ["org/tiny", model_id]
    assert registry.get(model_id).available and registry.get(model_id).base_path == outside
    assert registry.base_info("org/tiny").path == snapshot


def test_each_model_appears_once_and_spurious_events_change_nothing(
    registry, studio, trained_adapter
):
    model_id = publish(studio, trained_adapter, studio.models / "toy")
    wait_for(lambda: model_id in ids(registry))
    version, scans = registry.version, registry.scans
    (studio.adapters / model_id.removeprefix("lora/") / METADATA_FILE).touch()
    wait_for(lambda: registry.scans > scans)  # the touch was seen and rescanned
    assert registry.version == version
    assert len(ids(registry)) == len(set(ids(registry))) == 2


def test_a_failing_listener_does_not_stop_the_watcher(registry, studio, trained_adapter):
    def broken(_):
        raise RuntimeError("listener bug")

    registry.subscribe(broken)
    first = publish(studio, trained_adapter, studio.models / "toy")
    wait_for(lambda: first in ids(registry))
    second = publish(studio, trained_adapter, studio.models / "toy")
    wait_for(lambda: second in ids(registry))


def test_unknown_ids_are_refused(registry):
    with pytest.raises(StudioError, match="unknown model 'nope'"):
        registry.get("nope")
    # malformed ids are refused by the id check itself, before any lookup
    for bad in ("lora/../../etc/passwd", "lora/not-a-uuid", "lora/" + "a" * 5000):
        with pytest.raises(StudioError, match="is not an adapter id"):
            registry.get(bad)
    for bad in ("../toy", "..", "/etc/passwd", "a/b/c", "toy\x00", "x" * 300, "org/."):
        with pytest.raises(StudioError, match="is not a model id"):
            registry.get(bad)


def test_stop_ends_the_watcher_threads(studio, tmp_path):
    registry = ModelRegistry(studio, hub=tmp_path).start()
    threads = {t.name for t in threading.enumerate()}
    assert "model-registry" in threads
    registry.stop()
    assert "model-registry" not in {t.name for t in threading.enumerate()}


def test_writes_into_dot_folders_and_partial_files_do_not_trigger_rescans(studio):
    from watchdog.events import DirCreatedEvent, DirMovedEvent, FileCreatedEvent

    from core.serve.registry import _Handler

    dirty = threading.Event()
    handler = _Handler(dirty, (studio.models, studio.adapters))
    quiet = [
        FileCreatedEvent(str(studio.models / ".download-x" / "model.safetensors")),
        FileCreatedEvent(str(studio.adapters / ".0b7ed40e.partial" / "adapters.safetensors")),
        FileCreatedEvent(str(studio.models / "x" / "model.safetensors.incomplete")),
    ]
    for event in quiet:
        handler.dispatch(event)
    assert not dirty.is_set()
    handler.dispatch(DirMovedEvent(str(studio.models / ".download-x"), str(studio.models / "x")))
    assert dirty.is_set()  # the rename that makes it appear counts
    dirty.clear()
    handler.dispatch(DirCreatedEvent(str(studio.adapters / "0b7ed40e-d82d-49de-819e")))
    assert dirty.is_set()
