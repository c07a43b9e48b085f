"""Download an MLX model from the Hugging Face hub by repo id, failing fast when offline."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.errors import StudioError
from core.models.inspect import inspect_model, record_hub_id

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
CONNECT_TIMEOUT_SECONDS = "10"


def download_model(repo_id: str, models: Path, progress: Callable[[str], None] = print) -> Path:
    """Fetch ``repo_id`` into ``models/<org>--<name>`` and check it is MLX-loadable.

    Without a network (or with HF_HUB_OFFLINE set) it fails within seconds with a clear
    message instead of hanging on retries.
    """
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise StudioError(f"{repo_id!r} is not a Hugging Face repo id (owner/name)")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", CONNECT_TIMEOUT_SECONDS)
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", CONNECT_TIMEOUT_SECONDS)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    target = models / repo_id.replace("/", "--")
    if target.exists():
        raise StudioError(f"{target} already exists")
    # hidden from the registry until complete; unique, so two downloads never share it
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=models, prefix=f".download-{target.name}-"))
    progress(f"downloading {repo_id} into {target}")
    try:
        snapshot_download(
            repo_id,
            local_dir=staging,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
        )
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        inspect_model(staging)
        record_hub_id(staging, repo_id)
        staging.rename(target)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise StudioError(
            f"could not download {repo_id}: {reason}",
            hint="the Hugging Face hub is unreachable (offline?); copy an MLX model folder "
            "into the models folder, or import a .gguf file",
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"{repo_id} is ready in {target}")
    return target
