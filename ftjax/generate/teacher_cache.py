"""The teacher-cache pre-pass: a teacher's outputs on every record of a source's split, written
as a teacher cache (ftjax.data.teacher_cache) that a student's run reads with its data.

Each record is rendered as the teacher's task renders it (the teacher run's featurizer, the
same one its training used), the teacher runs once per batch of rows, jitted, without dropout,
and the cache keeps all of its logits per example (sequence classification), or per token
(token classification, unpacked causal LM) all of them or its `top_k` largest. The work is
written in parts of `part_records` records, so an interrupted pre-pass continues where it
stopped when run again with the same teacher and data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.data import ROLES
from ftjax.data.features import IndexedRecord, stack_rows
from ftjax.data.teacher_cache import CacheWriter, per_token, record_digest, tokens_crc
from ftjax.objectives.inputs import model_inputs
from ftjax.train.restore import restore_run
from ftjax.utils.paths import leaf_paths


def params_digest(params) -> str:
    """sha256 over a parameter tree's leaf paths, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for path, leaf in leaf_paths(params):
        array = np.asarray(leaf)
        digest.update(f"{path}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def teacher_outputs(model, top_k: int = 0) -> Callable:
    """A jitted (params, batch) -> (values, ids): the model's logits on the batch, all of them
    (ids 0..K-1) or the `top_k` largest of each item, in float32."""

    def outputs(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"],
                             **model_inputs(batch, model), deterministic=True).logits
        if isinstance(logits, dict):
            raise ValueError("a teacher cache holds one head's outputs; this teacher has one "
                             "per task")
        logits = logits.astype(jnp.float32)
        if top_k:
            return jax.lax.top_k(logits, top_k)
        ids = jnp.broadcast_to(jnp.arange(logits.shape[-1], dtype=jnp.int32), logits.shape)
        return logits, ids

    return jax.jit(outputs)


def write_teacher_cache(model, params, tokenizer, source, out: str | os.PathLike, *,
                        teacher: Mapping, split: str = "train", top_k: int = 0,
                        batch_size: int = 32, part_records: int = 1024,
                        overwrite: bool = False) -> Path:
    """The teacher cache of `source`'s `split` at `out` (see the module docstring).

    source: a loaded run source (ftjax.data.RunSource) of the teacher's run; teacher: what
    identifies the teacher (its spec, step, dtype; the digest of `params` is added), recorded
    in the manifest and compared when a partial cache is continued.
    """
    if split not in source.splits:
        raise ValueError(f"source {source.name!r} has no {split!r} split (it has "
                         f"{sorted(source.splits)})")
    if top_k < 0 or batch_size < 1 or part_records < 1:
        raise ValueError("top_k must be >= 0, batch_size and part_records >= 1")
    records, task = source.splits[split], source.task
    token_level = per_token(task)
    featurize = task.featurizer(tokenizer)
    outputs = teacher_outputs(model, top_k)
    n = len(records)
    first = stack_rows([featurize(IndexedRecord(0, 0, records[0]))]) if n else None
    width = jax.eval_shape(lambda p, b: model.apply(
        {"params": p}, b["input_ids"], **model_inputs(b, model), deterministic=True).logits,
        params, first).shape[-1] if n else 0
    if top_k > width:
        raise ValueError(f"top_k {top_k} is more than the teacher's {width} outputs")
    manifest = {"source": source.name, "split": split, "records": n,
                "record_digest": record_digest(records),
                "task": {"kind": type(task).__name__, "max_length": task.max_length},
                "per_token": token_level, "top_k": top_k, "outputs": int(width),
                "teacher": {**teacher, "params_sha256": params_digest(params)}}
    writer = CacheWriter(out, manifest, overwrite=overwrite)
    for start in range(writer.done(), n, part_records):
        rows = [featurize(IndexedRecord(i, i, records[i]))
                for i in range(start, min(n, start + part_records))]
        values, ids = [], []
        for b in range(0, len(rows), batch_size):
            chunk = rows[b: b + batch_size]
            # A short last batch is filled with copies of its last row: one compiled shape.
            batch = stack_rows(chunk + [chunk[-1]] * (batch_size - len(chunk)))
            v, i = outputs(params, batch)
            values.append(np.asarray(v)[: len(chunk)])
            ids.append(np.asarray(i)[: len(chunk)])
        writer.write_part(start, np.concatenate(values), np.concatenate(ids),
                          np.asarray([tokens_crc(row) for row in rows], np.uint32))
    return writer.finish()


def cache_run_outputs(workdir: str | os.PathLike, out: str | os.PathLike, *,
                      batch_size: int = 128) -> Path:
    """A finished run's outputs on every train record of its first source, as a teacher cache
    at `out` (the checkpoint the run restores last); an existing cache is kept as it is (a
    pipeline's `before` step, called again after an interruption)."""
    out = Path(out)
    if out.is_dir():
        return out
    exp, restored = restore_run(Path(workdir), roles=ROLES)
    teacher = {"workdir": str(Path(workdir).resolve()), "step": int(restored.step)}
    return write_teacher_cache(exp.model, restored.state.params, exp.tokenizer, exp.sources[0],
                               out, teacher=teacher, batch_size=batch_size)
