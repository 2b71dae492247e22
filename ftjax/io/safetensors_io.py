"""Read and write the tensors of an HF checkpoint directory (single or sharded safetensors).

Layouts read: `model.safetensors`, or `model.safetensors.index.json` whose `weight_map` names the
shard file of every tensor. numpy arrays throughout (bf16 arrives as ml_dtypes.bfloat16).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ftjax.io.loading import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint in `model_dir`, keyed as stored."""
    index, single = model_dir / INDEX_FILE, model_dir / SINGLE_FILE
    if index.is_file() and single.is_file():
        # Loaders disagree on which wins; one of them is stale, and guessing could load it.
        raise CheckpointError(f"{model_dir}: holds both {SINGLE_FILE} and {INDEX_FILE}; "
                              f"remove the stale one")
    if index.is_file():
        return _read_sharded(index)
    if single.is_file():
        return _read_file(single)
    others = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(
        p.name for p in model_dir.glob("*.safetensors"))
    hint = f" (found {', '.join(others)}; only the names above are read)" if others else ""
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")


def _read_file(path: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="np") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, TypeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def _read_sharded(index: Path) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{index}: not a safetensors index with a 'weight_map' ({err})") from err
    tensors: dict[str, np.ndarray] = {}
    problems = []
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            problems.append(f"shard {shard!r} named in the index does not exist")
            continue
        for key, value in _read_file(path).items():
            if key in tensors:
                problems.append(f"key {key!r} appears in more than one shard")
            elif weight_map.get(key) != shard:
                problems.append(f"key {key!r} is in {shard!r} but the index puts it in "
                                f"{weight_map.get(key)!r}")
            tensors[key] = value
    problems += [f"key {key!r} is indexed in {shard!r} but that shard does not hold it"
                 for key, shard in weight_map.items()
                 if key not in tensors and (index.parent / shard).is_file()]
    if problems:
        raise CheckpointError(
            f"{index}: inconsistent sharded checkpoint:\n  " + "\n  ".join(problems))
    return tensors


def write_tensors(tensors: dict[str, np.ndarray], model_dir: Path) -> Path:
    """Write one `model.safetensors`; metadata format "pt" is what transformers expects."""
    path = model_dir / SINGLE_FILE
    # safetensors refuses non-contiguous arrays (transposed kernels are views).
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})
    return path
