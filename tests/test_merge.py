"""Adapter merging: each method against an independent computation of its definition (PEFT's
``add_weighted_adapter`` and ``merge_utils``), on small random factors; then real adapters of
the toy model merged through the real ``lora-studio adapters merge``, loaded by mlx-lm, and
the refusals (other bases, ranks a method cannot mix, bad weights) before anything is written.
"""

from __future__ import annotations

import json
import re
import shutil

import mlx.core as mx
import numpy as np
import pytest

from core.adapters.merge import Part, merge_factors
from core.adapters.store import AdapterMetadata, AdapterStore
from core.params import TrainingParams
from core.train.service import TrainingService
from tests.helpers import colour_rows, lora_studio, write_jsonl

STEM = "model.layers.0.self_attn.q_proj"


def part(seed: int, rank: int = 4, scale: float = 2.0, weight: float = 1.0, shape=(12, 10)):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(shape[0], rank)).astype(np.float32)
    b = rng.normal(size=(rank, shape[1])).astype(np.float32)
    return Part(f"p{seed}", {STEM: (a, b)}, scale, rank, 1, weight)


def delta(a, b, scale=1.0):
    return scale * a @ b


def test_cat_gives_exactly_the_weighted_sum_of_the_deltas():
    one, two = part(1, rank=4, weight=0.7), part(2, rank=6, scale=0.5, weight=-0.4)
    a, b = merge_factors([one, two], "cat")[STEM]
    assert a.shape == (12, 10) and b.shape == (10, 10)  # ranks 4 + 6
    x = np.random.default_rng(3).normal(size=(5, 12)).astype(np.float32)
    expected = sum(p.weight * x @ delta(*p.factors[STEM], p.scale) for p in (one, two))
    np.testing.assert_allclose(x @ delta(a, b), expected, rtol=1e-5, atol=1e-5)


def test_linear_combines_each_side_with_the_root_of_weight_times_scale():
    one, two = part(1, weight=0.7), part(2, scale=0.5, weight=-0.4)
    a, b = merge_factors([one, two], "linear")[STEM]
    wa = [np.sqrt(0.7 * 2.0), -np.sqrt(0.4 * 0.5)]  # the sign on a only
    wb = [np.sqrt(0.7 * 2.0), np.sqrt(0.4 * 0.5)]
    np.testing.assert_allclose(a, wa[0] * one.factors[STEM][0] + wa[1] * two.factors[STEM][0])
    np.testing.assert_allclose(b, wb[0] * one.factors[STEM][1] + wb[1] * two.factors[STEM][1])


def test_svd_is_the_weighted_sum_truncated_to_its_rank():
    one, two = part(1, rank=4), part(2, rank=6, weight=0.5)
    total = sum(p.weight * delta(*p.factors[STEM], p.scale) for p in (one, two))
    a, b = merge_factors([one, two], "svd", rank=3)[STEM]
    assert a.shape == (12, 3) and b.shape == (3, 10)
    singular = np.linalg.svd(total, compute_uv=False)
    error = np.linalg.norm(total - delta(a, b))  # Eckart-Young: the best rank-3 error
    np.testing.assert_allclose(error, np.sqrt((singular[3:] ** 2).sum()), rtol=1e-4)
    full_a, full_b = merge_factors([one, two], "svd", rank=10)[STEM]
    np.testing.assert_allclose(delta(full_a, full_b), total, rtol=1e-4, atol=1e-4)


def ties_by_hand(tensors, weights, density):
    """TIES entry by entry: keep the top-k magnitudes of each tensor, elect each entry's sign
    by the sum of the kept values, average the weighted values that agree with it."""
    kept = []
    for tensor in tensors:
        k = int(density * tensor.size)
        threshold = np.sort(np.abs(tensor).ravel())[::-1][k - 1]
        kept.append(np.where(np.abs(tensor) >= threshold, tensor, 0.0))
    out = np.zeros_like(tensors[0])
    for index in np.ndindex(out.shape):
        values = [t[index] for t in kept]
        sign = 1.0 if sum(values) >= 0 else -1.0
        chosen = [w * v for w, v in zip(weights, values, strict=True) if np.sign(v) == sign]
        out[index] = sum(chosen) / max(len(chosen), 1)
    return out


def test_ties_trims_elects_the_sign_and_takes_the_disjoint_mean():
    parts = [part(1, weight=0.7), part(2, weight=0.3), part(3, weight=1.0, scale=0.5)]
    a, b = merge_factors(parts, "ties", density=0.4)[STEM]
    roots = [np.sqrt(p.weight * p.scale) for p in parts]
    expected_a = ties_by_hand([p.factors[STEM][0] for p in parts], roots, 0.4)
    expected_b = ties_by_hand([p.factors[STEM][1] for p in parts], roots, 0.4)
    np.testing.assert_allclose(a, expected_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, expected_b, rtol=1e-5, atol=1e-6)


def test_dare_drops_and_rescales_with_its_seed_and_is_linear_in_expectation():
    one, two = part(1, weight=0.7), part(2, weight=0.3)
    a, _ = merge_factors([one, two], "dare_linear", density=0.5, seed=7)[STEM]
    again, _ = merge_factors([one, two], "dare_linear", density=0.5, seed=7)[STEM]
    other, _ = merge_factors([one, two], "dare_linear", density=0.5, seed=8)[STEM]
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, other)
    # one adapter alone: each entry is either dropped or its value / density
    alone, _ = merge_factors([one, part(9, weight=0.0)], "dare_linear", density=0.5, seed=7)[STEM]
    value = np.sqrt(0.7 * 2.0) * one.factors[STEM][0]
    kept = alone != 0
    np.testing.assert_allclose(alone[kept], (value / 0.5)[kept], rtol=1e-5)
    assert 0.3 < kept.mean() < 0.7
    linear, _ = merge_factors([one, two], "linear")[STEM]
    runs = [merge_factors([one, two], "dare_linear", 0.5, seed=s)[STEM][0] for s in range(400)]
    np.testing.assert_allclose(np.mean(runs, axis=0), linear, atol=0.25)
    # nothing dropped: dare_ties is TIES's sign election and disjoint mean
    ties_like, _ = merge_factors([one, two], "dare_ties", density=1.0)[STEM]
    roots = [np.sqrt(0.7 * 2.0), np.sqrt(0.3 * 2.0)]
    by_hand = ties_by_hand([p.factors[STEM][0] for p in (one, two)], roots, 1.0)
    np.testing.assert_allclose(ties_like, by_hand, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory, toy_model):
    """Two real adapters of the toy model (rank 8), and one of rank 4."""
    home = tmp_path_factory.mktemp("merge-studio")
    from core.settings import Settings

    settings = Settings.from_env(home).ensure()
    shutil.copytree(toy_model, settings.models / "toy")
    data = write_jsonl(home / "colours.jsonl", colour_rows(32))
    service, ids = TrainingService(settings), []
    for seed, rank in ((1, 8), (2, 8), (3, 4)):
        params = TrainingParams(learning_rate=1e-2, lora_layers=2, seed=seed, rank=rank)
        run = service.start(settings.models / "toy", data, params, name=f"part {seed}")
        assert run.wait(timeout=300).type == "complete"
        ids.append(run.id)
    return home, ids


def test_adapters_merge_makes_an_adapter_mlx_lm_loads(two_adapters):
    from mlx_lm import load

    home, (first, second, _) = two_adapters
    done = lora_studio(
        "adapters",
        "merge",
        first,
        second,
        "--method",
        "ties",
        "--density",
        "0.5",
        "--weights",
        "0.6,0.4",
        "--name",
        "both",
        "--json",
        home=home,
    )
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)["id"]
    folder = home / "adapters" / merged
    meta = AdapterMetadata.read(folder)
    assert meta.adapterName == "both" and meta.mergeMethod == "ties"
    assert [p["id"] for p in meta.mergedFrom] == [first, second]
    assert [p["weight"] for p in meta.mergedFrom] == [0.6, 0.4]
    model, _ = load(str(home / "models" / "toy"), adapter_path=str(folder))
    assert np.isfinite(np.array(model(mx.array([[1, 2, 3]])))).all()
    listed = lora_studio("adapters", "list", "--json", home=home)
    assert merged in listed.stdout


def test_a_merge_is_refused_before_anything_is_written(two_adapters, tmp_path):
    home, (first, second, rank_four) = two_adapters
    store = AdapterStore(home / "adapters")
    before = {a.id for a in store.list()}
    shutil.copytree(store.path(second), tmp_path / "other")
    meta = AdapterMetadata.read(tmp_path / "other")
    meta.baseModelId = "someone-else"
    meta.write(tmp_path / "other")
    elsewhere = store.import_folder(tmp_path / "other")
    before.add(elsewhere)
    cases = [
        ((first, elsewhere), [], "one base: .* is on toy, .* is on someone-else"),
        ((first, rank_four), [], r"linear merges adapters of one rank; these have ranks \[4, 8\]"),
        ((first, second), ["--weights", "1,x"], "numbers separated by commas"),
        ((first, second), ["--weights", "1"], "1 weights for 2 adapters"),
        ((first, second), ["--method", "ties", "--density", "0"], "density 0.0"),
        ((first,), [], "two or more"),
    ]
    for ids, flags, message in cases:
        done = lora_studio("adapters", "merge", *ids, *flags, "--name", "m", home=home)
        assert done.returncode == 2, (ids, flags, done.stdout)
        assert re.search(message, done.stderr), done.stderr
    assert {a.id for a in store.list()} == before
    ok = lora_studio(
        "adapters",
        "merge",
        first,
        rank_four,
        "--method",
        "svd",
        "--rank",
        "6",
        "--name",
        "svd",
        home=home,
    )
    assert ok.returncode == 0, ok.stderr
