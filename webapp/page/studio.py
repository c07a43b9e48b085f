"""Studio: the core services one running app shares (page, API and CLI compose it)."""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from core import protocol
from core.access import Access
from core.adapters.store import AdapterStore
from core.errors import StudioError
from core.eval.runner import evaluate_published
from core.eval.store import EvalStore
from core.params import TrainingParams
from core.serve.engine import InferenceEngine
from core.serve.registry import ModelRegistry
from core.settings import Settings
from core.train.service import TrainingService
from webapp.page.train.form import CHOICES, LABELS

log = logging.getLogger(__name__)


@dataclass
class Studio:
    settings: Settings
    registry: ModelRegistry
    training: TrainingService
    engine: InferenceEngine
    adapters: AdapterStore
    exposed: bool = False  # reachable from other machines: dataset paths are confined
    last_chat: str | None = None  # the model chatted with last, which a page opens on

    @classmethod
    def open(cls, settings: Settings, exposed: bool = False) -> Studio:
        """Start the services: the registry's watcher and the engine's thread."""
        registry = ModelRegistry(settings).start()
        return cls(
            exposed=exposed,
            settings=settings,
            registry=registry,
            training=TrainingService(settings),
            # how many base models stay in memory at once (each serves all its adapters)
            engine=InferenceEngine(
                registry,
                max_bases=int(os.environ.get("LORA_STUDIO_MAX_BASES", 1)),
                prompt_cache_bytes=int(
                    float(os.environ.get("LORA_STUDIO_PROMPT_CACHE_GB", 2)) * 10**9
                ),
            ),
            adapters=AdapterStore(settings.adapters),
        )

    def close(self) -> None:
        run = self.training.current
        if run is not None and not run.done:
            run.stop("interrupted")  # it checkpoints and can be resumed next time
            run.wait(timeout=60)
        self.engine.close()
        self.registry.stop()

    def evaluate_when_published(self, run) -> None:
        """Once ``run`` is published, evaluate the adapter against its base on the run's
        test rows, if it kept any (in the background: the Evaluate tab lists it, and the
        adapter's metadata.json gets its summary)."""

        def wait_then_evaluate() -> None:
            final = run.wait()
            if isinstance(final, protocol.Complete) and final.published_id:
                try:
                    evaluate_published(
                        EvalStore(self.settings.evals), self.engine, final.published_id
                    )
                except StudioError:
                    log.exception("the test evaluation of %s failed", final.published_id)

        threading.Thread(target=wait_then_evaluate, name="test-evaluation", daemon=True).start()

    def base_choices(self) -> list[tuple[str, str]]:
        """(label, id) of the base models that can be trained or chatted with."""
        return [
            (e.display_name, e.id)
            for e in self.registry.entries()
            if e.kind == "base" and e.available
        ]

    @property
    def access(self) -> Access:
        """The gate every path and URL from a page user goes through (``core.access``)."""
        return self.settings.access(shared=self.exposed)

    def dataset_path(self, text: str) -> Path:
        """A dataset path from the page or its API: anything on a loopback-only studio,
        only under the dataset roots on one that other machines reach."""
        return self.access.path(text)

    def gated_params(self, params: TrainingParams) -> TrainingParams:
        """GRPO's reward files, judge and rubric as a page user named them, each through the
        gate: on a shared studio only the owner's files in rewards/ (``Access.code``), a
        judge on loopback or the owner's hosts, a rubric under the data roots, no variable
        of the owner's environment, and no run reported to W&B under the owner's login."""
        gate, update = self.access, {}
        if params.reward_file:
            files = [str(gate.code(f, self.settings.rewards)) for f in params.reward_file]
            update["reward_file"] = files
        if params.judge_url:
            update["judge_url"] = gate.url(params.judge_url, "judge")
        if params.rubric:
            update["rubric"] = str(gate.path(params.rubric))
        if gate.shared and "wandb" in (params.report_to or []):
            raise StudioError(
                "a shared studio does not send a page user's run to Weights & Biases under "
                "its owner's login",
                hint="report to tensorboard or mlflow (the owner's store), or have the owner "
                "start it from the command line",
            )
        if params.judge_key_env and gate.shared:
            raise StudioError(
                "a shared studio does not send its owner's keys for a page user",
                hint="leave the judge's key variable empty (a loopback judge needs none)",
            )
        return params.model_copy(update=update)

    def reward_file_names(self) -> list[str]:
        """The owner's reward files (the studio's rewards/ folder), by name."""
        return sorted(p.name for p in self.settings.rewards.glob("*.py") if p.is_file())

    def preferred_base(self) -> str | None:
        """The base model a new training starts with: the only one, else the one used last
        (the base of the newest run or adapter)."""
        bases = [model_id for _, model_id in self.base_choices()]
        if len(bases) <= 1:
            return bases[0] if bases else None
        used = [(r.created_at, r.model_id) for r in self.training.runs.list()]
        used += [
            (a.metadata.createdAt, a.metadata.baseModelId)
            for a in self.adapters.list()
            if a.metadata
        ]
        return next((m for _, m in sorted(used, reverse=True) if m in bases), None)

    def preferred_chat_model(self) -> str | None:
        """The model the Chat tab opens on: the one chatted with last, else the newest
        available adapter, else the only base model."""
        available = [e for e in self.registry.entries() if e.available]
        if self.last_chat in {e.id for e in available}:
            return self.last_chat
        adapters = [e for e in available if e.kind == "adapter"]  # newest first
        if adapters:
            return adapters[0].id
        bases = [e.id for e in available if e.kind == "base"]
        return bases[0] if len(bases) == 1 else None

    def chat_choices(self) -> list[tuple[str, str]]:
        """(label, id) of every model, unavailable ones marked with their reason."""
        return [
            (e.display_name if e.available else f"{e.display_name} - unavailable", e.id)
            for e in self.registry.entries()
        ]


def explain(exc: Exception) -> str:
    """A StudioError (or anything) as Markdown for the page: the message and the hint, the
    command line's flags named as the page's fields (``in_page_words``)."""
    message = in_page_words(getattr(exc, "message", str(exc)))
    hint = getattr(exc, "hint", None)
    text = "**Error:** " + message.replace("\n", "  \n")
    return text + (f"  \n*Hint:* {in_page_words(hint)}" if hint else "")


def in_page_words(text: str, mark: str = "**") -> str:
    """Core's messages name settings as the command line does (``--max-seq-length``, ``--method
    dpo``); the page names them by their fields' labels (``mark``ed: bold by default) and a
    value as the field shows it (``**Method** = DPO: prefer the chosen answer``)."""

    def field(found: re.Match) -> str:
        name, value = found.group(1).replace("-", "_"), found.group(2)
        if name not in LABELS:
            return found.group(0)
        label = f"{mark}{LABELS[name]}{mark}"
        if value and value in CHOICES.get(name, {}):
            return f"{label} = {CHOICES[name][value]}"
        return label + (f" = {value}" if value else "")

    return re.sub(r"--([a-z][a-z-]*)(?: ([\w.]+))?", field, text)
