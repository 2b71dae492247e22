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
import re
from collections.abc import Mapping
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
from ftjax.peft.fold import fold_prefix
from ftjax.peft.multi import from_adapters, task_model
from ftjax.utils.tree import split_leaves
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
    if model.adapter_slots is not None:
        raise ValueError("a model of many adapters is saved one adapter per slot "
                         "(save_task_adapters)")
    files = _adapter_files(model, params, trainable_mask, base_name=base_name, method=method,
                           step=step)
    if not is_primary():
        return None
    out = Path(out_dir)
    # Whole or not at all: a failed or killed save leaves `out` as it was.
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _write_adapter(tmp, *files)
    return _info(out, files[0])


def save_task_adapters(out_dir: str | os.PathLike, model: Model, params: dict,
                       trainable_mask: dict, *, base_name: str, method: str,
                       step: int | None = None,
                       overwrite: bool = False) -> dict[str, AdapterInfo] | None:
    """A multi-task model with an adapter per task (adapter slots named by task) as a store of
    single-task adapters, `out_dir/<task>/` each (its adapter and its own head), written
    together atomically; each loads alone like any adapter (`load_adapter`), and several on
    one base serve a batch together (`load_adapters`). Every process calls it (see
    save_adapter); process 0 gets {task: AdapterInfo}."""
    if model.adapter_slots is None:
        raise ValueError("save_task_adapters needs a model with an adapter per task")
    files = {task: _adapter_files(*task_model(model, params, task, trainable_mask),
                                  base_name=base_name, method=method, step=step)
             for task in model.adapter_slots.names}
    if not is_primary():
        return None
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for task, task_files in files.items():
            (tmp / task).mkdir()
            _write_adapter(tmp / task, *task_files)
    return {task: _info(out / task, tensors) for task, (tensors, _) in files.items()}


def _adapter_files(model: Model, params: dict, trainable_mask: dict, *, base_name: str,
                   method: str, step: int | None) -> tuple[dict, dict]:
    """(tensors by canonical path, metadata) of an adapter, on the host."""
    # Per layer on the host, after the fetch: no device copy of any stacked leaf.
    delta = flatten(_per_layer(fetch(delta_tree(model, params, trainable_mask))))
    layer_mask = _layer_mask(trainable_mask, params)
    delta = {path: v for path, v in delta.items() if _kept(model, path, layer_mask[path])}
    tensors = {path: np.ascontiguousarray(np.asarray(v)) for path, v in delta.items()}
    meta = {
        "format": FORMAT, "version": VERSION,
        "base": {"name": base_name, "fingerprint": base_fingerprint(model),
                 "arch": model.config.arch},
        "method": method,
        "peft": peft_to_dict(model.config),
        "head": dataclasses.asdict(model.head_config),
        "task_heads": {name: dataclasses.asdict(head) for name, head in model.task_heads},
        "num_params": int(sum(v.size for v in tensors.values())),
        "step": step,
    }
    return tensors, meta


def _write_adapter(directory: Path, tensors: dict, meta: dict) -> None:
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))


def _info(path: Path, tensors: dict) -> AdapterInfo:
    return AdapterInfo(path=path, num_params=int(sum(v.size for v in tensors.values())),
                       num_bytes=(path / WEIGHTS_FILE).stat().st_size, leaves=len(tensors))


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



def load_adapters(adapter_dirs: Mapping[str, str | os.PathLike],
                  pretrained: Pretrained) -> tuple[Model, dict]:
    """(model, params): several adapters of one method and settings on one base, side by side
    (adapter slots, in the order of `adapter_dirs`), so that each row of a batch runs with its
    own adapter in one compiled program (`adapter_ids`: a row's index into the names).

    Adapters with one head config (an LM's pretrained head, or equal task heads) keep their
    heads in their slots; adapters of different task heads become one model with a head per
    adapter name (logits {name: ...}). The base's arrays are shared, never copied. A prefix
    reparameterization is folded first (ftjax.peft.fold_prefix): serving needs only the
    prefixes it produces."""
    if not adapter_dirs:
        raise ValueError("load_adapters needs at least one adapter")
    loaded = {}
    for name, directory in adapter_dirs.items():
        model, params = load_adapter(directory, pretrained)
        if model.task_heads:
            raise CheckpointError(f"{directory}: a multi-task adapter; serve its tasks' own "
                                  f"adapters (a run with adapter_per_task writes them)")
        prefix = model.config.prefix
        if prefix is not None and prefix.projection:
            model, params = fold_prefix(model, params)
        with safe_open(str(Path(directory) / WEIGHTS_FILE), framework="np") as f:
            paths = frozenset(f.keys())
        loaded[name] = (str(directory), model, params, paths)
    first_dir, first, _, first_paths = next(iter(loaded.values()))
    for directory, model, _, paths in loaded.values():
        if model.config != first.config:
            raise CheckpointError(f"{directory}: its method settings differ from {first_dir}'s; "
                                  f"adapters served together need one method and settings")
        if {p for p in paths if not p.startswith("head/")} != {
                p for p in first_paths if not p.startswith("head/")}:
            raise CheckpointError(f"{directory}: holds other leaves than {first_dir}")
    one_head = all(m.head_config == first.head_config for _, m, _, _ in loaded.values())
    slot_paths = [p for p in first_paths if one_head or not p.startswith("head/")]
    leaves = _any_layout(slot_paths)
    adapters = {name: split_leaves(params, leaves)[1]
                for name, (_, _, params, _) in loaded.items()}
    base = split_leaves(next(iter(loaded.values()))[2], leaves)[0]
    if one_head:
        return from_adapters(first, base, adapters, leaves)
    heads = tuple((name, m.head_config) for name, (_, m, _, _) in loaded.items())
    model = dataclasses.replace(first, head_config=HeadConfig(kind="none"), task_heads=heads)
    base = {"backbone": base["backbone"],
            "head": {name: params["head"] for name, (_, _, params, _) in loaded.items()}}
    return from_adapters(model, base, adapters, leaves)


def _any_layout(paths) -> str:
    """The regex of these canonical per-layer paths in either layout (layers_N or a scanned
    `layers` stack): an adapter trains a leaf in every layer or in none when scanned."""
    return "|".join(sorted({re.sub(r"layers_\d+", r"layers(?:_\\d+)?", re.escape(p))
                            for p in paths}))
