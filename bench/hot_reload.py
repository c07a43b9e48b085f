"""Hot-reload latency: from an adapter's publish (one rename) to the registry listing it.

Publishes 20 adapters the way the training service does (a complete folder renamed from runs/
into adapters/) while the registry's watchdog observer runs, and measures with a listener how
long each takes to be listed. The adapter is a real one, trained on the toy llama first.

    python bench/hot_reload.py [--publishes 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models.toy import build_toy_llama  # noqa: E402
from core.params import TrainingParams  # noqa: E402
from core.serve.registry import ModelRegistry  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.train.service import TrainingService  # noqa: E402
from tests.helpers import colour_rows, write_jsonl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(Path(tmp) / "studio").ensure()
        build_toy_llama(settings.models / "toy")
        data = write_jsonl(Path(tmp) / "colours.jsonl", colour_rows())
        run = TrainingService(settings).start(
            settings.models / "toy", data, TrainingParams(epochs=1, lora_layers=-1)
        )
        assert run.wait().type == "complete"
        template = run.adapter_path

        listed: dict[str, float] = {}
        changed = threading.Condition()

        def on_change(registry: ModelRegistry) -> None:
            now = time.perf_counter()
            with changed:
                for entry in registry.entries():
                    listed.setdefault(entry.id, now)
                changed.notify_all()

        latencies = []
        with ModelRegistry(settings, hub=Path(tmp) / "no-hub") as registry:
            registry.subscribe(on_change)
            for _ in range(args.publishes):
                adapter_id = str(uuid.uuid4())
                staging = shutil.copytree(template, settings.runs / adapter_id)
                published = time.perf_counter()
                staging.rename(settings.adapters / adapter_id)
                with changed:
                    changed.wait_for(lambda: f"lora/{adapter_id}" in listed, timeout=10)  # noqa: B023
                latencies.append((listed[f"lora/{adapter_id}"] - published) * 1000)
                time.sleep(0.2)  # let the next publish start from a quiet watcher
        print(
            f"{args.publishes} publishes: median {median(latencies):.0f} ms, "
            f"max {max(latencies):.0f} ms, min {min(latencies):.0f} ms"
        )


if __name__ == "__main__":
    main()
