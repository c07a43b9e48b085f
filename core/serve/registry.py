"""ModelRegistry: every model a person can chat with, kept current by itself.

Base models come from the studio's models folder and the Hugging Face hub cache; adapters
from the adapters folder, each tied to its base. A watchdog observer on the models and
adapters folders triggers a (debounced) reload when something appears, disappears, is renamed
or changes; a slow periodic rescan is only a safety net (the hub cache is not watched).
Listeners hear of every change, and ``version`` increases with each, so a page can poll it
cheaply.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from core.adapters.store import AdapterStore, check_adapter_id
from core.errors import StudioError
from core.models.inspect import ModelInfo, inspect_model
from core.settings import Settings

log = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.05  # quiet time after the last file event before reloading
MAX_DELAY_SECONDS = 0.25  # a steady stream of events still reloads this often
RESCAN_SECONDS = 30.0
PARTIAL_SUFFIXES = (".partial", ".tmp", ".incomplete", ".lock")


@dataclass(frozen=True)
class ModelEntry:
    """One model that can be picked: a base model or an adapter on its base."""

    id: str
    display_name: str
    kind: Literal["base", "adapter"]
    path: Path
    base_id: str | None = None
    base_path: Path | None = None
    reason: str | None = None  # why it is unavailable; None when it can be used

    @property
    def available(self) -> bool:
        return self.reason is None


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, HF_HOME/hub, or the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def _mlx_supports(model_type: str) -> bool:
    from mlx_lm.utils import MODEL_REMAPPING

    name = MODEL_REMAPPING.get(model_type, model_type)
    return importlib.util.find_spec(f"mlx_lm.models.{name}") is not None


def _snapshot(repo) -> Path | None:
    """The snapshot a cached hub repo serves: the revision ``main`` points to, else the newest."""
    revisions = sorted(repo.revisions, key=lambda r: r.last_modified)
    main = [r for r in revisions if "main" in r.refs]
    chosen = (main or revisions)[-1:] if revisions else []
    return chosen[0].snapshot_path if chosen else None


def discover_hub_models(cache: Path) -> dict[str, ModelInfo]:
    """MLX-loadable models in the hub cache, by repo id; anything else there is skipped.

    huggingface_hub's own ``scan_cache_dir`` reads the cache: refs, revisions, and downloads
    that are still incomplete are its business."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        scanned = scan_cache_dir(cache)
    except (CacheNotFound, OSError, ValueError):
        return {}
    found: dict[str, ModelInfo] = {}
    for repo in sorted(scanned.repos, key=lambda r: r.repo_id):
        snapshot = _snapshot(repo) if repo.repo_type == "model" else None
        if snapshot is None:
            continue
        try:
            config = json.loads((snapshot / "config.json").read_text())
            if _mlx_supports(str(config.get("model_type", ""))):
                found[repo.repo_id] = inspect_model(snapshot, model_id=repo.repo_id)
        except (OSError, ValueError, StudioError):
            continue
    return found


class UnknownModel(StudioError):
    """No such model: the id is malformed or not listed (HTTP 404 in the API)."""


_BASE_ID = re.compile(r"[^/\x00-\x1f]{1,255}(/[^/\x00-\x1f]{1,255})?")


def check_model_id(model_id: str) -> str:
    """``lora/<uuid>`` for an adapter; a folder name or an ``owner/name`` hub id for a base.
    Anything else (``..``, absolute paths, NUL, very long strings) is refused."""
    if not isinstance(model_id, str):
        raise UnknownModel(f"{model_id!r} is not a model id")
    if model_id.startswith("lora/"):
        try:
            return "lora/" + check_adapter_id(model_id)
        except StudioError as exc:
            raise UnknownModel(exc.message, exc.hint) from None
    if (
        not _BASE_ID.fullmatch(model_id)
        or ".." in model_id.split("/")
        or "." in model_id.split("/")
    ):
        raise UnknownModel(f"{model_id!r} is not a model id", "see GET /v1/models for the ids")
    return model_id


class ModelRegistry:
    """The models that can be chatted with, and who wants to hear when they change."""

    def __init__(self, settings: Settings, hub: Path | None = None):
        self.settings = settings.ensure()
        self.hub = hub if hub is not None else hub_cache()
        self.adapters = AdapterStore(settings.adapters)
        self.version = 0  # grows with every change of the list
        self.scans = 0  # grows with every scan, changed or not (tests wait on it)
        self._entries: dict[str, ModelEntry] = {}
        self._listeners: list[Callable[[ModelRegistry], None]] = []
        self._lock = threading.RLock()
        self._scanning = threading.Lock()
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._observer: Observer | None = None
        self._thread: threading.Thread | None = None
        self.reload()

    # -- reading -------------------------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """Base models (by name), then adapters (newest first)."""
        with self._lock:
            return list(self._entries.values())

    def get(self, model_id: str) -> ModelEntry:
        """The entry of ``model_id``; UnknownModel for an id that is malformed (checked
        before any lookup: an id from outside never names a path) or not listed."""
        check_model_id(model_id)
        with self._lock:
            entry = self._entries.get(model_id)
        if entry is None:
            raise UnknownModel(f"unknown model {model_id!r}")
        return entry

    def base_info(self, base_id: str) -> ModelInfo:
        """The base model ``base_id`` as it is on disk now (raises if it is not usable)."""
        entry = self.get(base_id)
        if entry.kind != "base" or not entry.available:
            raise StudioError(f"{base_id} is not an available base model: {entry.reason}")
        return inspect_model(entry.path, model_id=entry.id)

    def adapter_base(self, adapter_id: str) -> ModelInfo:
        """The base model an available adapter runs on (what fuse and export need): the
        one the registry found for it, by id or by the path its metadata recorded, as chat
        loads it."""
        entry = self.get("lora/" + check_adapter_id(adapter_id))
        if not entry.available:
            raise StudioError(f"{entry.id} is unavailable: {entry.reason}")
        return inspect_model(entry.base_path, model_id=entry.base_id)

    # -- listening -----------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[ModelRegistry], None]) -> Callable[[], None]:
        """Call ``listener(registry)`` after every change; returns the unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def reload(self) -> bool:
        """Rescan everything; tell the listeners if anything changed. True when it did.

        Scans are serialized (the watcher and a page may both reload), so an older scan can
        never overwrite a newer one."""
        with self._scanning:
            entries = self._scan()
            self.scans += 1
            with self._lock:
                if entries == self._entries:
                    return False
                self._entries = entries
                self.version += 1
                listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(self)
            except Exception:  # noqa: BLE001 - one bad listener must not stop the others
                log.exception("a model registry listener failed")
        return True

    def _scan(self) -> dict[str, ModelEntry]:
        bases: dict[str, ModelEntry] = {}
        infos: dict[str, ModelInfo] = {}
        if self.hub.is_dir():
            infos.update(discover_hub_models(self.hub))
        for folder in sorted(self.settings.models.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            try:
                infos[folder.name] = inspect_model(folder)  # the studio's own wins a clash
            except StudioError as exc:
                bases[folder.name] = ModelEntry(
                    folder.name, folder.name, "base", folder, reason=exc.message
                )
        for model_id, info in sorted(infos.items()):
            bases[model_id] = ModelEntry(model_id, model_id, "base", info.path)
        entries = dict(sorted(bases.items()))
        for adapter in self.adapters.list():
            entry = self._adapter_entry(adapter, bases)
            entries[entry.id] = entry
        return entries

    @staticmethod
    def _adapter_entry(adapter, bases: dict[str, ModelEntry]) -> ModelEntry:
        model_id = f"lora/{adapter.id}"
        meta = adapter.metadata
        if meta is None:
            return ModelEntry(model_id, adapter.id, "adapter", adapter.path, reason=adapter.problem)
        base = bases.get(meta.baseModelId)
        if base is None and meta.baseModelPath:
            recorded = Path(meta.baseModelPath)
            try:
                info = inspect_model(recorded, model_id=meta.baseModelId)
                base = ModelEntry(info.id, info.id, "base", info.path)
            except StudioError:
                base = None
        reason = adapter.problem
        if base is None:
            reason = reason or f"base model {meta.baseModelId} not found"
        elif not base.available:
            reason = reason or f"base model {base.id} is unavailable: {base.reason}"
        return ModelEntry(
            model_id,
            f"{meta.adapterName} (LoRA on {meta.baseModelId})",
            "adapter",
            adapter.path,
            base_id=base.id if base else meta.baseModelId,
            base_path=base.path if base else None,
            reason=reason,
        )

    # -- watching ------------------------------------------------------------------------------

    def start(self) -> ModelRegistry:
        """Watch the models and adapters folders until ``stop()``."""
        if self._observer is not None:
            return self
        handler = _Handler(self._dirty, (self.settings.models, self.settings.adapters))
        self._observer = Observer()
        for folder in (self.settings.models, self.settings.adapters):
            self._observer.schedule(handler, str(folder), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._watch, name="model-registry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._observer is None:
            return
        self._stopping.set()
        self._dirty.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)
        self._observer = self._thread = None

    def __enter__(self) -> ModelRegistry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            self._dirty.wait(timeout=RESCAN_SECONDS)
            if self._stopping.is_set():
                return
            self._settle()
            try:
                self.reload()
            except Exception:  # noqa: BLE001 - the watcher must outlive any bad scan
                log.exception("model registry reload failed; will retry on the next change")

    def _settle(self) -> None:
        """Wait until file events pause (a folder copied in fires many), within a bound."""
        waited = 0.0
        while self._dirty.is_set() and waited < MAX_DELAY_SECONDS:
            self._dirty.clear()
            self._stopping.wait(DEBOUNCE_SECONDS)
            waited += DEBOUNCE_SECONDS


class _Handler(FileSystemEventHandler):
    """Marks the registry dirty on changes that can matter; ignores reads, and writes under
    dot-folders and partial files (a download or an import fills those for minutes, then
    appears with one rename, which does count)."""

    def __init__(self, dirty: threading.Event, roots: tuple[Path, ...]):
        self.dirty = dirty
        self.roots = roots

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):  # reads change nothing
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(self._matters(Path(os.fsdecode(p))) for p in paths if p):
            self.dirty.set()

    def _matters(self, path: Path) -> bool:
        for root in self.roots:
            if path.is_relative_to(root):
                parts = path.relative_to(root).parts
                return not any(p.startswith(".") or p.endswith(PARTIAL_SUFFIXES) for p in parts)
        return True
