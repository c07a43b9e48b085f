"""Merge LoRA adapters of one base into a new adapter, as PEFT's ``add_weighted_adapter``
defines each method (its ``merge_utils`` for TIES and DARE), so a merge made here and one made
in PEFT from the same exports compute the same model.

For adapter i with weight w_i, scale s_i and factors a_i (in, r_i), b_i (r_i, out) (mlx-lm's
layout: its delta is s_i * (a_i @ b_i)):
- ``cat``: a = [w_i s_i a_i ...] side by side, b = [b_i ...] stacked: the delta is exactly
  the weighted sum of the deltas; the rank is the sum of the ranks.
- ``linear``, ``ties``, ``dare_linear``, ``dare_ties`` combine the a's and, separately, the b's
  (same rank required), each weighted by sqrt(|w_i s_i|), the sign on a:
  ``linear`` sums them; ``ties`` keeps each tensor's largest ``density`` share of entries by
  magnitude, elects each entry's sign by the sum over adapters, and averages the entries that
  agree with it (a disjoint mean); ``dare_*`` drops entries at random with probability
  1 - density and rescales the rest by 1 / density (seeded), then sums (``dare_linear``) or
  elects signs as TIES does (``dare_ties``).
- ``svd``: the weighted sum of the deltas, truncated to rank R by its singular value
  decomposition (R: ``rank``, or the largest of the adapters' ranks).
The result's scale is 1 (PEFT: ``lora_alpha`` = r): the factors carry the weights and scales.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.adapters.layout import CONFIG_FILE, WEIGHTS_FILE
from core.adapters.store import AdapterMetadata, AdapterStore, check_name
from core.errors import StudioError
from core.models.inspect import ModelInfo

METHODS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties")
SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties")


@dataclass(frozen=True)
class Part:
    """One adapter to merge: its factors by module stem, its scale, rank and weight."""

    id: str
    factors: dict[str, tuple[np.ndarray, np.ndarray]]  # stem -> (a, b)
    scale: float
    rank: int
    layers: int
    weight: float


def merge_factors(
    parts: list[Part], method: str, density: float = 1.0, rank: int | None = None, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """stem -> merged (a, b) over every stem any part adapts."""
    rng = np.random.default_rng(seed)
    merged = {}
    for stem in sorted({stem for part in parts for stem in part.factors}):
        present = [p for p in parts if stem in p.factors]
        a_list = [p.factors[stem][0] for p in present]
        b_list = [p.factors[stem][1] for p in present]
        weights = np.array([p.weight * p.scale for p in present])
        if method == "cat":
            a = np.concatenate([w * a for w, a in zip(weights, a_list, strict=True)], axis=1)
            merged[stem] = (a, np.concatenate(b_list, axis=0))
        elif method == "svd":
            delta = sum(w * a @ b for w, a, b in zip(weights, a_list, b_list, strict=True))
            merged[stem] = _truncated(delta, rank or max(p.rank for p in parts))
        else:
            root = np.sqrt(np.abs(weights))
            a = _combine(method, a_list, root * np.sign(weights), density, rng)
            merged[stem] = (a, _combine(method, b_list, root, density, rng))
    return merged


def _truncated(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of rank ``rank`` whose product is closest to ``delta`` (in, out)."""
    u, s, vh = np.linalg.svd(delta.T, full_matrices=False)  # as PEFT: out x in
    b_peft, a_peft = u[:, :rank] * s[:rank], vh[:rank]
    return a_peft.T.astype(np.float32), b_peft.T.astype(np.float32)


def _combine(method: str, tensors: list[np.ndarray], weights, density: float, rng) -> np.ndarray:
    """PEFT's merge_utils on one side's tensors (stacked on a new first axis)."""
    if method in ("ties", "dare_linear", "dare_ties") and density < 1:
        prune = _by_magnitude if method == "ties" else _at_random
        tensors = [prune(t, density, rng) for t in tensors]
    stacked = np.stack(tensors)
    weighted = stacked * weights.reshape(-1, *([1] * (stacked.ndim - 1)))
    if method in ("linear", "dare_linear"):
        return weighted.sum(axis=0).astype(np.float32)
    majority = np.where(stacked.sum(axis=0) >= 0, 1.0, -1.0)  # the sign, elected by total
    agree = np.sign(stacked) == majority
    kept = (weighted * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1.0)
    return kept.astype(np.float32)


def _by_magnitude(tensor: np.ndarray, density: float, _rng) -> np.ndarray:
    """The largest ``density`` share of entries by magnitude kept, the rest zero."""
    keep = int(density * tensor.size)
    mask = np.zeros(tensor.size, dtype=tensor.dtype)
    mask[np.argsort(-np.abs(tensor).reshape(-1), kind="stable")[:keep]] = 1
    return tensor * mask.reshape(tensor.shape)


def _at_random(tensor: np.ndarray, density: float, rng) -> np.ndarray:
    """Each entry kept with probability ``density`` and rescaled by 1 / density."""
    return tensor * (rng.random(tensor.shape) < density) / density


def merge_adapters(
    store: AdapterStore,
    ids: list[str],
    base: ModelInfo,
    *,
    method: str,
    name: str,
    weights: list[float] | None = None,
    density: float = 1.0,
    rank: int | None = None,
    seed: int = 0,
) -> str:
    """A new adapter on ``base`` merging the adapters ``ids``; returns its id. Everything is
    checked before anything is written: the method, the weights, one base for all, the ranks
    the method needs."""
    name = check_name(name)
    weights = weights or [1.0] * len(ids)
    _check_request(ids, weights, method, density, rank)
    bases = {
        adapter_id: AdapterMetadata.read(store.path(adapter_id)).baseModelId for adapter_id in ids
    }
    if len(set(bases.values()) | {base.id}) > 1:
        named = ", ".join(f"{i} is on {b}" for i, b in bases.items())
        raise StudioError(f"adapters merge only on one base: {named}")
    parts = [
        _read_part(store, adapter_id, weight)
        for adapter_id, weight in zip(ids, weights, strict=True)
    ]
    ranks = sorted({part.rank for part in parts})
    if method in SAME_RANK and len(ranks) > 1:
        raise StudioError(
            f"{method} merges adapters of one rank; these have ranks {ranks}",
            hint="cat or svd merge adapters of any ranks",
        )
    merged = merge_factors(parts, method, density, rank, seed)
    new_rank = next(iter(merged.values()))[0].shape[1]
    keys = sorted({stem.split(".layers.", 1)[1].split(".", 1)[1] for stem in merged})
    config = {
        "fine_tune_type": "lora",
        "num_layers": max(part.layers for part in parts),
        "lora_parameters": {"rank": new_rank, "scale": 1.0, "dropout": 0.0, "keys": keys},
        "model": str(base.path),
        "base_model_id": base.id,
    }
    record = [{"id": p.id, "weight": p.weight} for p in parts]
    metadata = AdapterMetadata(
        adapterName=name,
        baseModelId=base.id,
        rank=new_rank,
        alpha=float(new_rank),
        loraLayers=config["num_layers"],
        targetModules=keys,
        mergedFrom=record,
        mergeMethod=method,
        mergeDensity=density,
        mergeSeed=seed,
        fineTuneType="lora",
    )
    return _publish(store, base, _filled(merged, base, config), config, metadata)


def parse_weights(text: str | None) -> list[float] | None:
    """ "0.6,0.4" as [0.6, 0.4]; nothing (None, blank) as None: 1 each."""
    if not (text or "").strip():
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise StudioError(f"weights {text!r}: numbers separated by commas (0.6,0.4)") from None


def _check_request(ids, weights, method: str, density: float, rank: int | None) -> None:
    if method not in METHODS:
        raise StudioError(f"merge method {method!r}: choose one of {', '.join(METHODS)}")
    if len(ids) < 2 or len(set(ids)) < len(ids):
        raise StudioError("a merge takes two or more different adapters")
    if len(weights) != len(ids):
        raise StudioError(f"{len(weights)} weights for {len(ids)} adapters: give one each")
    if not 0 < density <= 1:
        raise StudioError(f"density {density}: a share of the entries, above 0 and at most 1")
    if rank is not None and (method != "svd" or rank < 1):
        raise StudioError("--rank is the rank of an svd merge: a whole number from 1")


def _read_part(store: AdapterStore, adapter_id: str, weight: float) -> Part:
    import mlx.core as mx

    folder = store.path(adapter_id)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("fine_tune_type", "lora") != "lora":
        raise StudioError(
            f"{adapter_id} is a {config['fine_tune_type']} adapter: merges are of LoRA adapters"
        )
    lora = config["lora_parameters"]
    tensors = {
        k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(folder / WEIGHTS_FILE)).items()
    }
    stems = {name.rsplit(".", 1)[0] for name in tensors}
    factors = {s: (tensors[f"{s}.lora_a"], tensors[f"{s}.lora_b"]) for s in stems}
    return Part(
        adapter_id, factors, float(lora["scale"]), int(lora["rank"]), config["num_layers"], weight
    )


def _filled(merged: dict, base: ModelInfo, config: dict) -> dict:
    """The merged factors, with zero ones for each adapted layer's module no part adapted
    there (mlx-lm builds a LoRA layer for every key in every adapted layer)."""
    rank, keys = config["lora_parameters"]["rank"], config["lora_parameters"]["keys"]
    prefix = next(iter(merged)).split(".layers.", 1)[0] + ".layers"
    filled = dict(merged)
    for layer in range(base.num_layers - config["num_layers"], base.num_layers):
        for key in keys:
            stem = f"{prefix}.{layer}.{key}"
            shape = base.tensors.get(f"{stem}.weight")
            if stem not in filled and shape is not None:
                out_dim, in_dim = shape
                filled[stem] = (
                    np.zeros((in_dim, rank), np.float32),
                    np.zeros((rank, out_dim), np.float32),
                )
    return filled


def _publish(store, base, factors: dict, config: dict, metadata: AdapterMetadata) -> str:
    import mlx.core as mx

    with tempfile.TemporaryDirectory(dir=store.folder, prefix=".merge-") as tmp:
        staging = Path(tmp)
        weights = {}
        for stem, (a, b) in factors.items():
            weights[f"{stem}.lora_a"], weights[f"{stem}.lora_b"] = mx.array(a), mx.array(b)
        mx.save_safetensors(str(staging / WEIGHTS_FILE), weights)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        metadata.write(staging)
        return store.import_folder(staging, base, metadata.adapterName)
