"""Adapter-only checkpoints: a run's trainable delta (and its new head) without the base model.

    <dir>/adapter.safetensors  the delta's leaves under "/"-joined paths, canonical per-layer
                               layout (so a scanned run's adapter loads into an unscanned model)
    <dir>/adapter.json         what the delta fits: the base's name and shape fingerprint, the
                               method, every PEFT method's settings, the head, counts and bytes

    save_adapter(out, model, params, trainable_mask, base_name=..., method=...) -> AdapterInfo
    load_adapter(adapter_dir, pretrained)                       -> (model, params)

The delta is what trained (the trainability mask) plus a task head that did not come with the
base: a frozen fresh head is part of what the run's outputs depend on, a frozen pretrained LM
head is not. For LoRA on SmolLM2 that is kilobytes next to a 540 MB base; for full fine-tuning
the "delta" is the whole model, which is allowed but pointless (the HF export is the better form).

Loading refuses a base whose parameter shapes differ from the one the adapter was trained on
(the fingerprint hashes the bare backbone's per-layer paths and shapes, no dtypes: an adapter
trained on fp32 weights fits the same model stored in bf16). A different base *name* with the
same fingerprint only warns: the same weights are often reached by different names or paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ftjax.io.atomic_dir import atomic_dir
from ftjax.io.loading import (
    CheckpointError,
    Conversion,
    Converted,
    fill_params,
    flatten,
    unflatten,
)
from ftjax.io.pretrained import Pretrained
from ftjax.models import HeadConfig, Model, param_shapes
from ftjax.models.layout import unstack_layers
from ftjax.optim.trainability import layer_flags
from ftjax.parallel.hosts import fetch, is_primary
from ftjax.peft.fields import peft_to_dict, with_peft
from ftjax.settings import from_config

logger = logging.getLogger(__name__)

FORMAT = "ftjax-adapter"
VERSION = 1
META_FILE = "adapter.json"
WEIGHTS_FILE = "adapter.safetensors"


@dataclasses.dataclass(frozen=True)
class AdapterInfo:
    path: Path
    num_params: int
    num_bytes: int  # of adapter.safetensors on disk
    leaves: int


def base_fingerprint(model: Model) -> str:
    """A short hash of the bare backbone's per-layer leaf paths and shapes (no dtypes, no PEFT
    leaves, no head): identifies the base an adapter fits, whatever its layout or storage."""
    bare = model.config.without_peft().with_policy(scan_layers=False)
    shapes = flatten(param_shapes(Model(bare, HeadConfig(kind="none")))["backbone"])
    text = ";".join(f"{path}:{tuple(s.shape)}" for path, s in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _per_layer(tree: dict) -> dict:
    backbone = tree.get("backbone")
    if backbone and "layers" in backbone:
        return {**tree, "backbone": unstack_layers(backbone)}
    return tree


def _kept(model: Model, path: str, trains: Any) -> bool:
    return bool(np.any(trains)) or (model.head_config.kind != "lm" and path.startswith("head/"))


def _layer_mask(trainable_mask: dict, params: dict) -> dict:
    """The mask per canonical (per-layer) path: True if that leaf, or that layer of it, trains."""
    flags = layer_flags(trainable_mask)
    backbone = flags.get("backbone", {})
    if "layers" in backbone:  # scanned: every entry over the layer axis, then unstacked
        layers = jax.tree.map(lambda m, x: np.broadcast_to(np.asarray(m), x.shape[:1]),
                              backbone["layers"], params["backbone"]["layers"])
        flags = {**flags, "backbone": {**backbone, "layers": layers}}
    return flatten(_per_layer(flags))


def delta_tree(model: Model, params: dict, trainable_mask: dict) -> dict:
    """The leaves an adapter holds: trainable ones, and the whole head unless it is the base's
    pretrained LM head. A nested dict of only those leaves, in the params' own layout (a partly
    trained stacked leaf whole; `save_adapter` keeps only its trained layers)."""
    mask = flatten(layer_flags(trainable_mask))
    keep = {path: value for path, value in flatten(params).items()
            if _kept(model, path, mask.get(path))}
    if not keep:
        raise ValueError("the run trained nothing and has no new head: there is no delta to save")
    return unflatten(keep)


def save_adapter(out_dir: str | os.PathLike, model: Model, params: dict, trainable_mask: dict, *,
                 base_name: str, method: str, step: int | None = None,
                 overwrite: bool = False) -> AdapterInfo | None:
    """Write the delta of `params` (see delta_tree) for `model` to `out_dir`, atomically
    (ftjax.io.atomic_dir): a non-empty `out_dir` is refused (OutputExistsError) unless
    `overwrite`, and then replaced only once the new adapter is complete.

    With several processes every one must call this (the delta may be spread over all hosts'
    devices and is gathered); process 0 writes and gets the AdapterInfo, the others None.
    """
    out = Path(out_dir)
    # Per layer on the host, after the fetch: no device copy of any stacked leaf.
    delta = flatten(_per_layer(fetch(delta_tree(model, params, trainable_mask))))
    layer_mask = _layer_mask(trainable_mask, params)
    delta = {path: v for path, v in delta.items() if _kept(model, path, layer_mask[path])}
    if not is_primary():
        return None
    tensors = {path: np.ascontiguousarray(np.asarray(v)) for path, v in delta.items()}
    num_params = int(sum(v.size for v in tensors.values()))
    meta = {
        "format": FORMAT, "version": VERSION,
        "base": {"name": base_name, "fingerprint": base_fingerprint(model),
                 "arch": model.config.arch},
        "method": method,
        "peft": peft_to_dict(model.config),
        "head": dataclasses.asdict(model.head_config),
        "task_heads": {name: dataclasses.asdict(head) for name, head in model.task_heads},
        "num_params": num_params,
        "step": step,
    }
    # Whole or not at all: a failed or killed save leaves `out` as it was.
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return AdapterInfo(path=out, num_params=num_params,
                       num_bytes=(out / WEIGHTS_FILE).stat().st_size, leaves=len(tensors))


def read_adapter_meta(adapter_dir: str | os.PathLike) -> dict:
    adapter = Path(adapter_dir)
    meta_file = adapter / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"{adapter}: no {META_FILE}; not an ftjax adapter directory")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_file}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_file}: format {meta.get('format')!r} version "
                              f"{meta.get('version')!r}; this ftjax reads {FORMAT!r} {VERSION}")
    return meta


def load_adapter(adapter_dir: str | os.PathLike, pretrained: Pretrained) -> tuple[Model, dict]:
    """(model, params): `pretrained` with the adapter's methods switched on and its delta in.

    Every leaf is accounted for strictly (ftjax.io.loading.fill_params): a leaf that neither the
    base nor the adapter fills, or an adapter tensor the model has no place for, is an error
    naming it. The result has the layout of `pretrained.model.config.scan_layers`; its base
    leaves are `pretrained.params`' own arrays (nothing copied, nothing through the host), so a
    caller that donates one set of them to a jitted function must not use the other.
    """
    adapter = Path(adapter_dir)
    meta = read_adapter_meta(adapter)
    where = str(adapter)
    base = meta["base"]
    have = base_fingerprint(pretrained.model)
    if base["fingerprint"] != have:
        raise CheckpointError(
            f"{where}: trained on {base['name']!r} (shape fingerprint {base['fingerprint']}), "
            f"which is not the loaded base {pretrained.name!r} (fingerprint {have})")
    if base["name"] != pretrained.name:
        logger.warning("%s: trained on %r, loading onto %r (same parameter shapes)", where,
                       base["name"], pretrained.name)

    try:
        head = from_config(HeadConfig, meta["head"], f"{where}: head")
        task_heads = tuple((name, from_config(HeadConfig, values, f"{where}: task_heads"))
                           for name, values in meta.get("task_heads", {}).items())
        config = with_peft(pretrained.model.config, meta["peft"], where=where)
    except (KeyError, TypeError, ValueError) as err:  # unknown keys, bad values
        raise CheckpointError(f"{where}: {err}") from None
    model = Model(config, head, task_heads=task_heads)

    weights = adapter / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="np") as f:
            delta = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None

    # The base's arrays stay where they are (fill_params reuses them): no host copy of the model.
    tensors = {path: Converted(source=f"base:{path}", value=v, stored_shape=v.shape)
               for path, v in flatten(_per_layer(_base_part(pretrained, head))).items()}
    tensors.update({path: Converted(source=f"{WEIGHTS_FILE}:{path}", value=v,
                                    stored_shape=v.shape) for path, v in delta.items()})
    params = fill_params(model, Conversion(tensors=tensors), where=where)
    return model, params


def _base_part(pretrained: Pretrained, head: HeadConfig) -> dict:
    """The base leaves the adapter builds on: the backbone, and the pretrained LM head if the
    adapter kept it (a new task head comes from the adapter itself)."""
    params = pretrained.params
    keeps_lm_head = head.kind == "lm" and pretrained.model.head_config.kind == "lm"
    return {k: v for k, v in params.items() if k == "backbone" or (k == "head" and keeps_lm_head)}

