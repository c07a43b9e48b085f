"""The fast BLAS is found, really loaded into the training process, and agrees with stock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.machine.blas import Blas, with_blas
from core.machine.blas_choice import choose_blas

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
    import core.machine.blas_choice

    assert core.machine.blas.gpu_backend() is None  # this machine has mlx[cpu] only
    monkeypatch.setattr(core.machine.blas_choice, "gpu_backend", lambda: "mlx-cuda-12")
    for choice in ("auto", "mkl", "openblas"):
        assert choose_blas(choice) == Blas("stock")  # no preload, and no hint to add one


def test_auto_takes_the_fastest_by_measurement_and_measures_again_when_things_change(
    tmp_path, monkeypatch
):
    """Two timings forced (MKL the faster, as on an Intel Xeon; then OpenBLAS, as on an AMD
    Zen 5): the faster is chosen, the choice is cached, and a changed library, CPU or MLX
    measures again."""
    from core.machine import blas_choice

    libraries = {name: tmp_path / f"lib{name}.so" for name in ("mkl", "openblas")}
    for file in libraries.values():
        file.write_bytes(b"v1")
    found = [Blas(name, {"LD_PRELOAD": str(file)}) for name, file in libraries.items()]
    cache, timed = tmp_path / "cache" / "blas-choice.json", []

    def timer(speeds):
        def time_it(blas):
            timed.append(blas.name)
            return speeds[blas.name]

        return time_it

    intel = timer({"mkl": 70.0, "openblas": 30.0})
    first = blas_choice.measure_choice(found, cache, intel)
    assert (first.chosen.name, first.gflops, first.cached) == (
        "mkl",
        {"mkl": 70, "openblas": 30},
        False,
    )
    assert timed == ["mkl", "openblas"]
    again = blas_choice.measure_choice(found, cache, timer({}))  # the cache answers: no timing
    assert (again.chosen.name, again.cached, timed) == ("mkl", True, ["mkl", "openblas"])

    amd = timer({"mkl": 84.0, "openblas": 90.0})
    libraries["openblas"].write_bytes(b"v2, a new build")  # a changed library: measured again
    assert blas_choice.measure_choice(found, cache, amd).chosen.name == "openblas"
    assert len(timed) == 4
    monkeypatch.setattr(blas_choice, "cpu_key", lambda: "another-cpu")  # a new CPU: again
    assert not blas_choice.measure_choice(found, cache, amd).cached
    monkeypatch.setattr(blas_choice, "version", lambda name: "99.0")  # a new MLX: again
    assert not blas_choice.measure_choice(found, cache, amd).cached
    assert blas_choice.measure_choice(found, cache, timer({})).cached


def test_a_blas_that_fails_its_measurement_is_never_chosen_nor_kept(tmp_path, monkeypatch):
    """Every candidate at 0 GFLOP/s (a crashing library, a machine too loaded to finish):
    the stock BLAS, with the reason, and no cache; a single candidate is measured too."""
    from core.machine import blas_choice

    library = tmp_path / "libmkl_rt.so.3"
    library.write_bytes(b"crashes")
    broken = Blas("mkl", {"LD_PRELOAD": str(library)})
    cache = tmp_path / "cache" / "blas-choice.json"
    failed = blas_choice.measure_choice([broken], cache, lambda blas: 0.0)
    assert failed.chosen.name == "stock" and "measures again" in failed.chosen.hint
    assert not cache.exists()
    monkeypatch.setattr(blas_choice, "mkl", lambda: broken)
    monkeypatch.setattr(blas_choice, "openblas", lambda: None)
    monkeypatch.setattr(blas_choice, "gpu_backend", lambda: None)
    monkeypatch.delenv("LORA_STUDIO_BLAS", raising=False)
    timed = []
    chosen = blas_choice.choose_blas(cache=cache, timer=lambda b: timed.append(b) or 0.0)
    assert chosen.name == "stock" and timed == [broken] and not cache.exists()
    working = blas_choice.choose_blas(cache=cache, timer=lambda b: 50.0)
    assert working == broken and cache.exists()  # once it runs, it is chosen and kept


def test_a_real_measurement_runs_the_blas_in_a_subprocess():
    from core.machine.blas_choice import time_blas

    assert time_blas(Blas("stock")) > 0.5  # GFLOP/s: even the reference BLAS does this
    # a library that kills its process (an illegal instruction, say) scores 0: never chosen
    assert time_blas(Blas("dies", {"PYTHONHOME": "/nonexistent"})) == 0.0


def test_doctor_prints_each_blas_measured_and_the_choice(tmp_path):
    from tests.helpers import lora_studio

    done = lora_studio("doctor", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["blas"]["stock"] > 0.5 and report["chosen"] in report["blas"]
    assert report["cpu"] and report["why"] and "on" in report["native_jit"]
    text = lora_studio("doctor", home=tmp_path)
    assert "<- runs use this" in text.stdout and "native JIT:" in text.stdout
