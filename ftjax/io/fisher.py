"""A diagonal Fisher information file: one float32 array per parameter leaf, keyed by the leaf's
'/'-joined path in the parameter tree, with what it was estimated from as metadata.

`ftjax fisher WORKDIR` writes one for a finished run (ftjax.train.fisher); the `ewc` loss term
reads it. Online EWC's running estimate is the same file: each estimate may add a decayed earlier
one, and the metadata says how many estimates it holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from ftjax.io.atomic_dir import atomic_file
from ftjax.settings import ConfigError

FISHER_FILE = "fisher.safetensors"
_META_KEY = "ftjax_fisher"


def flat_leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{path: leaf} of a nested dict, leaving out None leaves (the frozen half's gaps)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat_leaves(value, path))
        elif value is not None:
            out[path] = value
    return out


def save_fisher(path: str | os.PathLike, diagonal: dict[str, np.ndarray], meta: dict, *,
                overwrite: bool = False) -> Path:
    """Write {leaf path: Fisher diagonal} and its metadata (written whole or not at all)."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in diagonal.items()},
                  str(tmp), metadata={_META_KEY: json.dumps(meta)})
    return Path(path)


def load_fisher(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """({leaf path: diagonal}, metadata) of a Fisher file; a directory means its fisher file."""
    path = Path(path)
    if path.is_dir():
        path = path / FISHER_FILE
    if not path.is_file():
        raise ConfigError(f"no Fisher file at {path} (write one with `ftjax fisher WORKDIR`)")
    try:
        arrays = load_file(str(path))
        with safe_open(str(path), "numpy") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except (OSError, ValueError, SafetensorError) as err:
        raise ConfigError(f"{path} is not a readable Fisher file: {err}") from None
    if raw is None:
        raise ConfigError(f"{path} is a safetensors file but not a Fisher file (no "
                          f"{_META_KEY} metadata)")
    negative = [k for k, v in arrays.items() if not np.all(np.isfinite(v)) or np.any(v < 0)]
    if negative:
        raise ConfigError(f"{path}: the diagonal of {negative[0]} has negative or non-finite "
                          f"values; a Fisher diagonal is >= 0")
    return arrays, json.loads(raw)


__all__ = ["FISHER_FILE", "flat_leaves", "load_fisher", "save_fisher"]
