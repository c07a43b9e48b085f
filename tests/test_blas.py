"""The fast BLAS is found, really loaded into the training process, and agrees with stock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.machine.blas import Blas, choose_blas, with_blas

PROBE = """
import json, mlx.core as mx
from core.machine.blas import loaded_blas
mx.random.seed(0)
a, b = mx.random.normal((256, 512)), mx.random.normal((512, 128))
print(json.dumps({"blas": loaded_blas(), "product": (a @ b).tolist()}))
"""


def probe(blas: Blas) -> dict:
    env = with_blas({k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}, blas)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_fast_blas_is_loaded_and_agrees_with_stock():
    fast = choose_blas()
    if fast.name == "stock":
        pytest.skip(f"no fast BLAS on this machine: {fast.hint}")
    stock, tuned = probe(Blas("stock")), probe(fast)
    assert (stock["blas"], tuned["blas"]) == ("stock", fast.name)
    assert np.allclose(stock["product"], tuned["product"], rtol=1e-4, atol=1e-4)


def test_stock_can_be_chosen_and_unknown_choices_fall_back(monkeypatch):
    assert choose_blas("stock").env == {}
    monkeypatch.setenv("LORA_STUDIO_BLAS", "stock")
    assert choose_blas().name == "stock"
    monkeypatch.delenv("LORA_STUDIO_BLAS")
    assert choose_blas("nonsense").name == choose_blas("auto").name  # an unknown choice: auto


def test_existing_preload_is_kept():
    merged = with_blas({"LD_PRELOAD": "/x/libfoo.so"}, Blas("mkl", {"LD_PRELOAD": "/y/mkl.so"}))
    assert merged["LD_PRELOAD"] == "/y/mkl.so:/x/libfoo.so"


def test_no_preload_on_a_gpu_backend(monkeypatch):
    import core.machine.blas

    assert core.machine.blas.gpu_backend() is None  # this machine has mlx[cpu] only
    monkeypatch.setattr(core.machine.blas, "gpu_backend", lambda: "mlx-cuda-12")
    for choice in ("auto", "mkl", "openblas"):
        assert choose_blas(choice) == Blas("stock")  # no preload, and no hint to add one
