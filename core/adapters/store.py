"""Published adapters: metadata.json, and the store that lists, renames, deletes, exports,
imports and fuses them.

Field names of metadata.json follow SAM's adapter metadata (camelCase) so adapters move
between the two apps; unknown fields are kept when the file is rewritten. Every change to the
adapters folder is one rename (a folder appears or disappears whole), so the registry's
watcher never sees a half-written adapter.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import protocol
from core.adapters.layout import (
    CONFIG_FILE,
    EVENTS_FILE,
    EXPORTED_FILES,
    METADATA_FILE,
    WEIGHTS_FILE,
)
from core.errors import StudioError
from core.files import replacing, write_json_atomic
from core.machine.commands import run_tool
from core.models.inspect import ModelInfo, tensor_shapes

SCHEMA_VERSION = 1
MAX_IMPORT_BYTES = 4 * 2**30  # uncompressed; LoRA weights of a 70B model at rank 64 fit
MAX_NAME_LENGTH = 200
FUSE_TIMEOUT_SECONDS = 3600  # a 70B fuse on a slow disk stays well inside
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class AdapterMetadata(BaseModel):
    """metadata.json of one adapter (docs/formats.md describes each field)."""

    model_config = ConfigDict(extra="allow")

    adapterName: str
    baseModelId: str
    baseModelPath: str | None = None
    createdAt: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    trainingDataset: str | None = None
    epochs: int | None = None
    rank: int | None = None
    alpha: float | None = None
    learningRate: float | None = None
    batchSize: int | None = None
    loraLayers: int | None = None
    trainingSteps: int | None = None
    finalLoss: float | None = None
    finalValidationLoss: float | None = None
    bestValidationLoss: float | None = None
    bestStep: int | None = None
    keptCheckpoint: str | None = None  # "best" or "last": whose weights were published
    keptStep: int | None = None
    stoppedEarly: bool | None = None
    layerCount: int | None = None
    parameterCount: int | None = None
    durationSeconds: float | None = None
    tokensPerSecond: float | None = None
    tokensCounted: str | None = None  # what tokensPerSecond counts: "trained" (the loss's targets)
    method: str | None = None  # sft, dpo, orpo or grpo
    beta: float | None = None  # DPO's temperature, ORPO's odds-ratio weight
    rewardAccuracy: float | None = None  # of the published weights, on the validation pairs
    rewardMargin: float | None = None
    schemaVersion: int = SCHEMA_VERSION

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / METADATA_FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls, folder: Path) -> AdapterMetadata:
        return cls.model_validate_json((folder / METADATA_FILE).read_text(encoding="utf-8"))


def check_adapter_id(adapter_id: str) -> str:
    """An adapter id from outside (URL, form, API), accepted only in UUID form, so it can
    never name a path outside the adapters folder."""
    value = str(adapter_id).removeprefix("lora/")
    if not _UUID.fullmatch(value):
        raise StudioError(f"{adapter_id!r} is not an adapter id", hint="ids look like lora/<uuid>")
    return value


def check_name(name: str) -> str:
    name = " ".join(str(name).split())
    if not name or len(name) > MAX_NAME_LENGTH:
        raise StudioError(f"an adapter name needs 1 to {MAX_NAME_LENGTH} characters")
    return name


@dataclass(frozen=True)
class Adapter:
    """One folder of the adapters folder; ``problem`` says why it cannot be used, if so."""

    id: str
    path: Path
    metadata: AdapterMetadata | None
    problem: str | None = None

    @property
    def name(self) -> str:
        return self.metadata.adapterName if self.metadata else self.id


def inspect_adapter(folder: Path) -> Adapter:
    """Read an adapter folder without loading weights: metadata, config, weights header."""
    try:
        metadata = AdapterMetadata.read(folder)
    except (OSError, ValueError, ValidationError) as exc:
        reason = str(exc).splitlines()[0]
        return Adapter(folder.name, folder, None, f"metadata.json is invalid ({reason})")
    try:
        read_config(folder)
    except StudioError as exc:
        return Adapter(folder.name, folder, metadata, exc.message)
    try:
        tensor_shapes(folder / WEIGHTS_FILE)
    except StudioError:
        return Adapter(folder.name, folder, metadata, f"{WEIGHTS_FILE} is missing or unreadable")
    return Adapter(folder.name, folder, metadata)


def read_config(folder: Path) -> dict:
    """An adapter's adapter_config.json, or a StudioError naming the file and what is wrong
    with it (it may come from an archive someone sent)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudioError(f"{CONFIG_FILE} is missing") from None
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise StudioError(f"{CONFIG_FILE} is not valid JSON ({reason})") from None
    if not isinstance(config, dict) or not isinstance(config.get("lora_parameters", {}), dict):
        raise StudioError(
            f"{CONFIG_FILE} is not an mlx-lm adapter config",
            hint="it must be a JSON object with a lora_parameters object",
        )
    return config


def expected_lora_shapes(config: dict, base: ModelInfo, shapes: dict[str, list[int]]) -> dict:
    """The tensor names and shapes an mlx-lm LoRA adapter with ``config`` has on ``base``.

    ``shapes`` maps the base's weight names to their shapes (from safetensors headers). For a
    quantized base the input width is read from the quantization scales.
    """
    params = config.get("lora_parameters") or {}
    rank, keys = params.get("rank"), params.get("keys")
    num_layers = config.get("num_layers", base.num_layers)
    if not isinstance(rank, int) or rank < 1:
        raise StudioError(f"{CONFIG_FILE} has no valid lora_parameters.rank")
    first = 0 if num_layers in (-1, None) else max(base.num_layers - num_layers, 0)
    expected = {}
    for name, shape in shapes.items():
        match = re.fullmatch(r"(.*\.layers\.(\d+)\.(.+))\.weight", name)
        if not match or int(match.group(2)) < first or len(shape) != 2:
            continue
        module, key = match.group(1), match.group(3)
        if keys is not None and key not in keys:
            continue
        out_dim, in_dim = shape
        if f"{module}.scales" in shapes:  # packed quantized weight: width from the scales
            group = (base.quantization or {}).get("group_size", 64)
            in_dim = shapes[f"{module}.scales"][1] * group
        expected[f"{module}.lora_a"] = [in_dim, rank]
        expected[f"{module}.lora_b"] = [rank, out_dim]
        if config.get("fine_tune_type") == "dora":  # DoRA's magnitude per output
            expected[f"{module}.m"] = [out_dim]
    return expected


def check_fits_base(folder: Path, base: ModelInfo) -> None:
    """Raise StudioError naming every adapter tensor that does not fit ``base``."""
    config = read_config(folder)
    if config.get("fine_tune_type", "lora") not in ("lora", "dora"):
        raise StudioError(
            f"only LoRA and DoRA adapters can be imported, not {config['fine_tune_type']}"
        )
    tensors = tensor_shapes(folder / WEIGHTS_FILE)
    expected = expected_lora_shapes(config, base, base.tensors)
    wrong = []
    for name, shape in tensors.items():
        if name not in expected:
            wrong.append(f"{name}: no such LoRA parameter on {base.id}")
        elif shape != expected[name]:
            wrong.append(f"{name}: shape {shape}, {base.id} needs {expected[name]}")
    if not tensors:
        wrong.append(f"{WEIGHTS_FILE} holds no tensors")
    elif (config.get("lora_parameters") or {}).get("keys") is not None:
        # with its keys named, the adapter's tensors are known: each must be there (a loader
        # that reuses LoRA layers would keep another adapter's values for a missing one)
        wrong += [f"{name}: missing" for name in sorted(expected.keys() - tensors.keys())]
    if wrong:
        more = f"\n- ... and {len(wrong) - 10} more" if len(wrong) > 10 else ""
        raise StudioError(
            f"this adapter does not fit {base.id}:\n- " + "\n- ".join(wrong[:10]) + more,
            hint="import it with the base model it was trained on",
        )


def loss_history(folder: Path) -> list[dict]:
    """The curves of a published run, redrawn from its events.jsonl (``protocol.curve``)."""
    return protocol.curve(protocol.read_events(folder / EVENTS_FILE))


class AdapterStore:
    """The adapters folder: every operation on published adapters."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, adapter_id: str) -> Path:
        path = self.folder / check_adapter_id(adapter_id)
        if not path.is_dir():
            raise StudioError(f"adapter {adapter_id} does not exist")
        return path

    def find(self, text: str) -> str:
        """The id of the adapter a person names: ``lora/<uuid>``, ``<uuid>``, a unique
        start of one (the page shows the first 8 characters), or its name (case aside).
        Refused, naming the candidates, when more than one matches."""
        given = str(text).strip().removeprefix("lora/")
        if _UUID.fullmatch(given):
            self.path(given)
            return given
        adapters = self.list()
        by_prefix = [a for a in adapters if len(given) >= 4 and a.id.startswith(given.lower())]
        by_name = [a for a in adapters if a.name.casefold() == given.casefold()]
        found = by_prefix or by_name
        if len(found) == 1:
            return found[0].id
        if not found:
            raise StudioError(
                f"no adapter is named or starts with {given[:80]!r}",
                hint="lora-studio adapters list shows their ids and names",
            )
        listed = ", ".join(f"{a.id[:8]} ({a.name})" for a in found[:6])
        raise StudioError(
            f"{given[:80]!r} names {len(found)} adapters: {listed}",
            hint="give more of the id",
        )

    def list(self) -> list[Adapter]:
        """Every adapter folder that has a metadata.json, newest first. Folders without one
        are being written by someone (or are not adapters) and are skipped."""
        adapters = [
            inspect_adapter(folder)
            for folder in self.folder.iterdir()
            if folder.is_dir()
            and _UUID.fullmatch(folder.name)
            and (folder / METADATA_FILE).exists()
        ]
        return sorted(
            adapters, key=lambda a: a.metadata.createdAt if a.metadata else "", reverse=True
        )

    def read(self, adapter_id: str) -> Adapter:
        return inspect_adapter(self.path(adapter_id))

    def rename(self, adapter_id: str, name: str) -> None:
        """Rewrite adapterName only; every other field, known or not, is kept as it was."""
        path = self.path(adapter_id)
        try:
            data = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StudioError(f"cannot rename: metadata.json is unreadable ({exc})") from None
        data["adapterName"] = check_name(name)
        write_json_atomic(path / METADATA_FILE, data)

    def delete(self, adapter_id: str) -> None:
        """Remove an adapter: renamed out of sight in one step, then deleted."""
        path = self.path(adapter_id)
        trash = self.folder / f".deleting-{path.name}-{uuid.uuid4().hex[:8]}"
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def export(self, adapter_id: str, target: Path) -> Path:
        """A .zip with the weights, adapter_config.json, metadata.json and the event log."""
        path = self.path(adapter_id)
        try:
            with (
                replacing(target) as partial,
                zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive,
            ):
                for name in EXPORTED_FILES:
                    if (path / name).is_file():
                        archive.write(path / name, arcname=name)
        except OSError as exc:
            raise StudioError(f"the export to {target} failed: {exc.strerror or exc}") from None
        return target

    def import_zip(
        self, archive: Path, base: ModelInfo | None = None, name: str | None = None
    ) -> str:
        """Import an exported .zip (or a zipped mlx-lm adapter folder). Returns the new id.

        Only the files an adapter has are taken from the archive, never its other members."""
        unpacked = self._staging()
        try:
            safe_extract(archive, unpacked)
            return self.import_folder(adapter_root(unpacked), base, name)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)

    def import_folder(
        self, folder: Path, base: ModelInfo | None = None, name: str | None = None
    ) -> str:
        """Import a folder made by ``mlx_lm lora`` (adapter_config.json + adapters.safetensors)
        or by this studio. Returns the new id."""
        staging = self._staging()
        try:
            for file in EXPORTED_FILES:
                if (folder / file).is_file():
                    shutil.copy2(folder / file, staging / file)
            return self._adopt(staging, staging, base, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def fuse(
        self,
        adapter_id: str,
        base: ModelInfo,
        models_folder: Path,
        name: str,
        dequantize: bool = False,
    ) -> Path:
        """Fuse an adapter into its base with ``mlx_lm fuse``; the result is a new base model
        folder (it appears in the models folder whole, by one rename). ``dequantize`` gives
        float weights from a quantized base (what GGUF export needs)."""
        path = self.path(adapter_id)
        name = check_name(name)
        if Path(name).name != name or name.startswith("."):
            raise StudioError(f"{name!r} cannot be a model folder name")
        target = models_folder / name
        if target.exists():
            raise StudioError(f"a model named {name} already exists")
        staging = models_folder / f".fusing-{uuid.uuid4().hex[:8]}"
        command = [sys.executable, "-m", "mlx_lm", "fuse", "--model", str(base.path)]
        command += ["--adapter-path", str(path), "--save-path", str(staging)]
        if dequantize:
            command.append("--dequantize")
        try:
            run_tool(command, what="mlx_lm fuse", timeout=FUSE_TIMEOUT_SECONDS)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _staging(self) -> Path:
        staging = self.folder / f".import-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        return staging

    def _adopt(self, root: Path, staging: Path, base: ModelInfo | None, name: str | None) -> str:
        """Check an unpacked adapter, complete its metadata, and publish it under a new id."""
        for required in (WEIGHTS_FILE, CONFIG_FILE):
            if not (root / required).is_file():
                raise StudioError(f"the adapter has no {required}")
        metadata = _metadata_for_import(root, base, name)
        if base is not None:
            check_fits_base(root, base)
        metadata.write(root)
        adapter_id = str(uuid.uuid4())
        root.rename(self.folder / adapter_id)
        return adapter_id


def _metadata_for_import(root: Path, base: ModelInfo | None, name: str | None) -> AdapterMetadata:
    """The imported adapter's metadata. Its base is the one the user picked, else the base of
    this studio with the recorded ``baseModelId``: a path that came with the archive is never
    kept (it would choose which folder the studio loads)."""
    if (root / METADATA_FILE).is_file():
        metadata = inspect_adapter(root).metadata
        if metadata is None:
            raise StudioError("the adapter's metadata.json is invalid")
        metadata.baseModelPath = None
        if base is not None:
            metadata.baseModelId, metadata.baseModelPath = base.id, str(base.path)
        if name:
            metadata.adapterName = check_name(name)
        return metadata
    if base is None or not name:
        raise StudioError(
            "this adapter has no metadata.json",
            hint="name the base model it was trained on, and a name for it",
        )
    config = read_config(root)
    lora = config.get("lora_parameters") or {}
    rank, scale = lora.get("rank"), lora.get("scale")
    return AdapterMetadata(
        adapterName=check_name(name),
        baseModelId=base.id,
        baseModelPath=str(base.path),
        rank=rank,
        alpha=scale * rank if isinstance(rank, int) and isinstance(scale, int | float) else None,
        loraLayers=config.get("num_layers"),
        learningRate=config.get("learning_rate"),
        batchSize=config.get("batch_size"),
        trainingSteps=config.get("iters"),
        trainingDataset=str(config["data"]) if config.get("data") else None,
        importedFrom="mlx-lm",
    )


def safe_extract(archive: Path, target: Path) -> None:
    """Unpack a zip refusing anything that could write outside ``target`` or fill the disk."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            total = sum(m.file_size for m in members)
            if total > MAX_IMPORT_BYTES or len(members) > 100:
                raise StudioError(
                    f"the archive is too large ({total / 2**20:.0f} MB in {len(members)} files)",
                    hint=f"adapters up to {MAX_IMPORT_BYTES // 2**30} GB can be imported",
                )
            for member in members:
                path = PurePosixPath(member.filename.replace("\\", "/"))
                mode = member.external_attr >> 16
                if path.is_absolute() or ".." in path.parts or (mode & 0o170000) == 0o120000:
                    raise StudioError(f"the archive holds an unsafe path: {member.filename}")
            zf.extractall(target)
    except zipfile.BadZipFile:
        raise StudioError(f"{archive.name} is not a valid .zip file") from None


def adapter_root(folder: Path) -> Path:
    """Where the adapter files are in an unpacked archive: at the top, or in one folder."""
    if (folder / CONFIG_FILE).is_file():
        return folder
    found = [p.parent for p in folder.glob(f"*/{CONFIG_FILE}")]
    if len(found) == 1:
        return found[0]
    raise StudioError(f"the archive has no {CONFIG_FILE} at its top or in one folder")
