"""Published adapters: the metadata.json schema.

Field names follow SAM's adapter metadata (camelCase) so adapters move between the two
apps; unknown fields are kept when the file is rewritten.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .files import write_json_atomic

SCHEMA_VERSION = 1
WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
METADATA_FILE = "metadata.json"
EVENTS_FILE = "events.jsonl"


class AdapterMetadata(BaseModel):
    """metadata.json of one adapter (see docs/ and ARCHITECTURE.md for each field)."""

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
    layerCount: int | None = None
    parameterCount: int | None = None
    durationSeconds: float | None = None
    tokensPerSecond: float | None = None
    schemaVersion: int = SCHEMA_VERSION

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / METADATA_FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls, folder: Path) -> AdapterMetadata:
        return cls.model_validate_json((folder / METADATA_FILE).read_text(encoding="utf-8"))
