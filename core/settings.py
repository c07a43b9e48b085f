"""Where the studio keeps things, with environment overrides.

Everything lives under one home folder (``LORA_STUDIO_HOME``, else the platform's user data
dir) so a studio can be moved, backed up or thrown away as a whole; each sub-folder can be
pointed elsewhere on its own (``LORA_STUDIO_MODELS``, ``LORA_STUDIO_ADAPTERS``,
``LORA_STUDIO_RUNS``, ``LORA_STUDIO_DATASETS``, ``LORA_STUDIO_EXPORTS``,
``LORA_STUDIO_EVALS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from core.access import Access, hosts_from_env

URL_USERS = ("judge", "teacher")  # what the server calls by a URL a page user gives


@dataclass(frozen=True)
class Settings:
    home: Path
    models: Path
    adapters: Path
    runs: Path
    datasets: Path
    exports: Path  # files made for download, one folder per export, pruned by age
    evals: Path  # evaluations, one folder each: their summary and their rows
    rewards: Path  # the owner's GRPO reward files: all a shared studio's page may run
    sweeps: Path  # sweeps, one folder each: what was asked, and the Optuna study in SQLite

    @classmethod
    def from_env(cls, home: str | os.PathLike | None = None) -> Settings:
        root = Path(
            home or os.environ.get("LORA_STUDIO_HOME") or platformdirs.user_data_dir("lora-studio")
        )

        def folder(name: str) -> Path:
            override = os.environ.get(f"LORA_STUDIO_{name.upper()}")
            return Path(override) if override else root / name

        return cls(
            home=root,
            models=folder("models"),
            adapters=folder("adapters"),
            runs=folder("runs"),
            datasets=folder("datasets"),
            exports=folder("exports"),
            evals=folder("evals"),
            rewards=folder("rewards"),
            sweeps=folder("sweeps"),
        )

    def dataset_roots(self) -> list[Path]:
        """Where datasets may be read by path when the studio is reachable from other
        machines: the datasets folder, and the folders in ``LORA_STUDIO_DATA_ROOTS``
        (separated by the OS path separator)."""
        extra = os.environ.get("LORA_STUDIO_DATA_ROOTS", "")
        return [self.datasets, *(Path(p) for p in extra.split(os.pathsep) if p)]

    def access(self, shared: bool) -> Access:
        """The gate for what page users name (``core.access``): on a shared studio, files
        under ``dataset_roots`` and URLs to loopback or the hosts in
        ``LORA_STUDIO_JUDGE_HOSTS`` (a judge) and ``LORA_STUDIO_TEACHER_HOSTS`` (a teacher)."""
        hosts = {what: hosts_from_env(f"LORA_STUDIO_{what.upper()}_HOSTS") for what in URL_USERS}
        return Access(shared, tuple(self.dataset_roots()), hosts)

    def ensure(self) -> Settings:
        """Create the folders; the runs and adapters folders must share a file system so
        that publishing an adapter is one atomic rename."""
        folders = (self.models, self.adapters, self.runs, self.datasets, self.exports, self.evals)
        for path in (*folders, self.rewards, self.sweeps):
            path.mkdir(parents=True, exist_ok=True)
        return self
