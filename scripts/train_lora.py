#!/usr/bin/env python3
"""Train a LoRA adapter with mlx-lm, printing LoRA Studio's JSON-lines protocol.

A thin entry point over ``core.train.worker``: the studio's service runs the same code as
``python -m core.train.worker``. Try ``python scripts/train_lora.py --help``.
"""

import sys
from pathlib import Path

# Runnable from a source checkout that was not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.train.worker import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
