"""Cached teacher outputs: a teacher's logits for every record of a train split, written once
by a pre-pass (ftjax.generate.teacher_cache) and read with the data, so that distillation
(the `kd` term without a `teacher`) runs no teacher in the step.

A cache is a directory:

  manifest.json   what it was made from: the source, split, record count and a digest of the
                  records (in order), the task's kind and max_length, the teacher (its spec,
                  step, dtype and a digest of its parameters), `top_k` and the output width
  values.npy      float32 (N, K) per example (sequence classification) or (N, T, K) per token
                  (token classification, unpacked causal LM): the teacher's logits, all of
                  them (K = the output width, top_k 0) or its K largest (top_k K)
  ids.npy         int32, the same shape: which outputs the values are (0..K-1 when all)
  tokens_crc.npy  uint32 (N,): a checksum of each row's real tokens as the teacher saw them

Rows of a source with `teacher_cache` carry the record's cached outputs as the features
ftjax.data.features.TEACHER_FEATURES name (WithTeacherOutputs); the cache is found by the row's record
index, so shuffling, bucketing and resuming need nothing more. Opening a cache for a source
checks that it was made from the same records in the same order (the digest), and each row
that its tokens are the ones the teacher saw (per-token caches: the student and the teacher
must tokenize alike; per-example caches need not).

The pre-pass writes parts under OUT.partial/ (each part renamed into place whole) beside a
manifest, and a rerun with the same manifest continues after the last part written; another
teacher or other data refuses. The finished cache is assembled there and renamed to OUT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ftjax.data.errors import DataError
from ftjax.data.features import TEACHER_FEATURES, IndexedRecord, Row, Shapes
from ftjax.data.types import RecordSource, TokenizerLike
from ftjax.io.atomic_dir import OutputExistsError, atomic_file

FORMAT = 1
MANIFEST = "manifest.json"
_ARRAYS = ("values", "ids", "tokens_crc")
_PART = "part-{:08d}.npz"


def record_digest(records: RecordSource) -> str:
    """sha256 over the records' canonical JSON, in order: the data a cache belongs to."""
    digest = hashlib.sha256()
    for i in range(len(records)):
        digest.update(json.dumps(records[i], sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def tokens_crc(row: Row) -> int:
    """A checksum of a row's real tokens (input_ids under attention_mask)."""
    ids = np.asarray(row["input_ids"])[np.asarray(row["attention_mask"]) > 0]
    return zlib.crc32(ids.astype(np.int32).tobytes())


def per_token(task: Any) -> bool:
    """Whether `task`'s rows are scored per token (a cache of (T, K) per record) rather than
    per example. Only tasks with one deterministic row per record can be cached."""
    if hasattr(task, "tasks"):
        raise DataError("multi-task rows cannot carry a teacher cache (kd distils one head)")
    if task.packed or getattr(task, "multi_row", False):
        raise DataError("a teacher cache holds one row per record: packed rows (task.packing) "
                        "and multi-row tasks (QA windows) cannot be cached")
    if getattr(task, "language_model", False) and getattr(task, "mask_prob", None) is not None:
        raise DataError("a masked LM draws new masks every epoch: its teacher outputs cannot "
                        "be cached (run the teacher in the step: kd with a teacher)")
    shapes = task.row_shapes()
    mask = shapes.get("loss_mask", shapes.get("example_mask"))
    if mask is None:
        raise DataError("a teacher cache needs rows with labels (loss_mask or example_mask)")
    return len(mask[0]) == 1


def read_manifest(path: str | os.PathLike) -> dict:
    manifest = Path(path) / MANIFEST
    try:
        data = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not a teacher cache (no {MANIFEST}; a cache still being "
                        f"written is {Path(path).name}.partial)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{manifest}: unreadable ({err})") from None
    if data.get("format") != FORMAT:
        raise DataError(f"{manifest}: cache format {data.get('format')!r}, this ftjax reads "
                        f"{FORMAT}")
    return data


# --------------------------------------------------------------------------------------------
# Writing (the pre-pass hands it numpy arrays; it owns the files)


class CacheWriter:
    """Writes a cache in parts, resumable: see the module docstring."""

    def __init__(self, out: str | os.PathLike, manifest: Mapping, *, overwrite: bool = False):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.manifest = {"format": FORMAT, **manifest}
        if self.out.exists() and not overwrite:
            raise OutputExistsError(f"{self.out} exists: choose a new path, or pass "
                                    f"--overwrite (overwrite=True) to replace it")
        if self.partial.exists():
            begun = read_manifest(self.partial)
            changed = sorted(k for k in begun.keys() | self.manifest.keys()
                             if begun.get(k) != self.manifest.get(k))
            if changed:
                raise DataError(f"{self.partial} was begun from another teacher or other data "
                                f"({', '.join(changed)} differ): remove it, or write to "
                                f"another path")
        else:
            self.partial.mkdir(parents=True)
            with atomic_file(self.partial / MANIFEST) as tmp:
                tmp.write_text(json.dumps(self.manifest, indent=1))

    def parts(self) -> list[Path]:
        return sorted(self.partial.glob("part-*.npz"))

    def done(self) -> int:
        """Records already written: the parts are contiguous from record 0."""
        end = 0
        for part in self.parts():
            start = int(part.stem.split("-")[1])
            if start != end:
                raise DataError(f"{part}: a part starting at record {start} follows records "
                                f"0..{end - 1}; the partial cache is damaged, remove it")
            with np.load(part) as arrays:
                end += len(arrays["tokens_crc"])
        return end

    def write_part(self, start: int, values: np.ndarray, ids: np.ndarray,
                   crcs: np.ndarray) -> None:
        with atomic_file(self.partial / _PART.format(start), overwrite=True) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez names a path "*.npz"
                np.savez(f, values=values.astype(np.float32), ids=ids.astype(np.int32),
                         tokens_crc=crcs.astype(np.uint32))

    def finish(self) -> Path:
        """Join the parts into the cache's arrays and move it to `out`."""
        parts = self.parts()
        if self.done() != self.manifest["records"]:
            raise DataError(f"{self.partial}: holds {self.done()} of "
                            f"{self.manifest['records']} records")
        for name in _ARRAYS:
            chunks = []
            for part in parts:
                with np.load(part) as arrays:
                    chunks.append(arrays[name])
            np.save(self.partial / f"{name}.npy", np.concatenate(chunks))
        for part in parts:
            part.unlink()
        if self.out.exists():
            shutil.rmtree(self.out) if self.out.is_dir() else self.out.unlink()
        os.replace(self.partial, self.out)
        return self.out


# --------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass(frozen=True)
class TeacherCache:
    """A finished cache, its arrays memory-mapped."""

    path: Path
    manifest: dict
    values: np.ndarray
    ids: np.ndarray
    tokens_crc: np.ndarray

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TeacherCache":
        path = Path(path)
        manifest = read_manifest(path)
        try:
            arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: a damaged teacher cache ({err})") from None
        n = manifest["records"]
        if any(len(a) != n for a in arrays.values()) or arrays["values"].shape != \
                arrays["ids"].shape:
            raise DataError(f"{path}: its arrays do not hold {n} records as its manifest says")
        return cls(path, manifest, **arrays)

    @property
    def per_token(self) -> bool:
        return self.values.ndim == 3

    def row_shapes(self) -> Shapes:
        shape = self.values.shape[1:]
        values, ids = TEACHER_FEATURES[self.per_token]
        return {values: (shape, np.dtype(np.float32)), ids: (shape, np.dtype(np.int32))}

    def check_source(self, name: str, records: RecordSource, task: Any) -> None:
        """The cache was made from these records, in this order, for rows of this shape."""
        where = f"source {name!r}: teacher_cache {self.path}"
        if len(records) != self.manifest["records"]:
            raise DataError(f"{where} holds {self.manifest['records']} records, the train "
                            f"split has {len(records)}")
        if record_digest(records) != self.manifest["record_digest"]:
            raise DataError(f"{where} was made from other records (or another order) than "
                            f"the train split's")
        if per_token(task) != self.per_token:
            raise DataError(f"{where} holds per-{'token' if self.per_token else 'example'} "
                            f"outputs, this task's rows are scored per "
                            f"{'token' if per_token(task) else 'example'}")
        if self.per_token and self.values.shape[1] != task.max_length:
            raise DataError(f"{where} has rows of {self.values.shape[1]} tokens, the task's "
                            f"max_length is {task.max_length}")
        labels = getattr(task, "num_labels", None)
        if labels is not None and self.manifest["outputs"] != labels:
            raise DataError(f"{where}: its teacher has {self.manifest['outputs']} outputs, the "
                            f"task {labels} labels")

    def features(self, item: IndexedRecord, row: Row) -> Row:
        i = item.record_index
        if self.per_token and tokens_crc(row) != int(self.tokens_crc[i]):
            raise DataError(f"teacher_cache {self.path}: record {i} becomes other tokens than "
                            f"the teacher's (per-token outputs need one tokenizer and template)")
        values, ids = TEACHER_FEATURES[self.per_token]
        return {values: np.asarray(self.values[i], np.float32),
                ids: np.asarray(self.ids[i], np.int32)}


@dataclasses.dataclass(frozen=True)
class WithTeacherOutputs:
    """`task`'s train rows with each record's cached teacher outputs (see the module
    docstring)."""

    task: Any
    cache: TeacherCache

    @property
    def packed(self) -> bool:
        return False

    @property
    def max_length(self) -> int:
        return self.task.max_length

    def row_shapes(self) -> Shapes:
        return {**self.task.row_shapes(), **self.cache.row_shapes()}

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "_CachedRows":
        return _CachedRows(self.task.featurizer(tokenizer, seed=seed), self.cache)


class _CachedRows:
    def __init__(self, featurize, cache: TeacherCache):
        self.featurize, self.cache = featurize, cache

    def __call__(self, item: IndexedRecord) -> Row:
        row = self.featurize(item)
        row.update(self.cache.features(item, row))
        return row
