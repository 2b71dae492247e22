"""Record sources: random-access sequences of dict records (``len(src)``, ``src[i]``).

Every source here returns something grain's ``MapDataset.source`` accepts, and fails with an
error from ``ftjax.data.errors`` that names the file, split, column or row at fault.

- ``polarity_splits``: the Pang & Lee movie-review sentences (asset ``polarity``), binarized by
  the sign of the mean human rating, split stratified by label. With the defaults
  (``seed=0``, ``fractions=(0.8, 0.1, 0.1)``) the 10,568 nonzero rows (5,242 positive,
  5,326 negative; 37 zero ratings dropped) split into

      train 8,455 (4,194 pos / 4,261 neg), validation 1,057 (524 / 533), test 1,056 (524 / 532).

  Split sizes depend only on the fractions, membership only on ``seed``: the permutation is
  drawn by ``numpy.random.default_rng(seed)`` over ids sorted numerically, so every machine and
  Python version gets the same split.
- ``local_file``: csv / tsv / jsonl / json / txt without HF ``datasets``.
- ``hf_dataset``: HF ``datasets`` from local files (by extension) or a hub name.
- ``tfds_source``: ``tensorflow-datasets`` via ``tfds.data_source`` (array_record, no TensorFlow).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftjax import assets
from ftjax.data.errors import (
    DataError,
    EmptySplitError,
    MissingColumnError,
    MissingFileError,
)
from ftjax.data.readers import read_rows
from ftjax.data.records import label_field, text_field
from ftjax.data.splitting import check_fractions, stratified_split
from ftjax.data.types import Record

SPLIT_NAMES = ("train", "validation", "test")


# --------------------------------------------------------------------------------------------
# Polarity (asset)


def polarity_splits(
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    *,
    path: str | os.PathLike | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Train / validation / test records ``{"text", "label", "id"}`` of the polarity corpus.

    label 1 = positive (mean rating > 0), 0 = negative; zero ratings are dropped. ``id`` is the
    row id in the source file. Records in each split are ordered by id (the train pipeline
    shuffles). A split whose fraction is 0 is empty; any other empty split is an error.
    ``path`` overrides the asset (a ``movieReviewSnippets_GroundTruth.txt`` file).
    """
    fractions = check_fractions(fractions)
    if path is None:
        path = assets.resolve("polarity")
    rows = _read_polarity_rows(Path(path))
    ordered = [rows[row_id] for row_id in sorted(rows)]
    # Stratified: each label's rows split separately with the same fractions.
    parts = stratified_split(len(ordered), fractions, seed, [row["label"] for row in ordered])
    splits = {}
    for name, part, fraction in zip(SPLIT_NAMES, parts, fractions):
        if not part and fraction > 0:
            raise EmptySplitError(
                f"polarity split {name!r} is empty with fractions {tuple(fractions)} "
                f"(file {path})"
            )
        splits[name] = [ordered[i] for i in part]
    return splits


def _read_polarity_rows(path: Path) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        raise MissingFileError(f"polarity file not found: {path}")
    rows: dict[int, dict[str, Any]] = {}
    # split("\n") rather than splitlines(): the latter also breaks on unicode separators
    # that may sit inside a sentence. The file has CRLF line ends.
    lines = path.read_text(encoding="utf-8").split("\n")
    for line_number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        try:
            row_id, rating = int(fields[0]), float(fields[1])
            text = fields[2]
        except (IndexError, ValueError):
            raise DataError(
                f"{path}:{line_number}: expected 'id<TAB>rating<TAB>text', got {line[:80]!r}"
            ) from None
        if row_id in rows:
            raise DataError(f"{path}:{line_number}: duplicate id {row_id}")
        if rating != 0:
            rows[row_id] = {"text": text, "label": int(rating > 0), "id": row_id}
    if not rows:
        raise EmptySplitError(f"polarity file {path} holds no rows with a nonzero rating")
    return rows


# --------------------------------------------------------------------------------------------
# Local files without HF datasets


def local_file(
    path: str | os.PathLike,
    *,
    text_column: str,
    label_column: str | None = None,
    num_labels: int | None = None,
) -> list[dict[str, Any]]:
    """Records ``{"text": str[, "label": int]}`` from a .csv, .tsv, .jsonl, .json or .txt
    (one record a line) file in UTF-8, read by ``ftjax.data.readers``.

    Labels must be integers (or integral strings); with ``num_labels`` each must lie in
    ``[0, num_labels)``. ``ftjax.data.loading.load_source`` reads label names, other encodings
    and split patterns.
    """
    records = []
    for where, row in read_rows(path):
        record = {"text": text_field(row, text_column, where)}
        if label_column is not None:
            record["label"] = label_field(row, label_column, where, num_labels)
        records.append(record)
    return records


# --------------------------------------------------------------------------------------------
# HF datasets

# File extension -> (datasets builder, extra load_dataset kwargs).
_HF_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}


def hf_dataset(
    path_or_name: str | os.PathLike,
    split: str = "train",
    *,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    columns: Sequence[str] = (),
    **load_kwargs: Any,
):
    """A ``datasets.Dataset`` split (random access, records are dicts).

    ``path_or_name`` is one of: a local file whose extension picks the builder (.csv, .tsv,
    .json, .jsonl, .parquet, .txt; it becomes ``split``), a builder name with ``data_files``
    (as in ``datasets.load_dataset("csv", data_files=...)``), a local directory, or a hub
    name. ``columns`` are checked to exist. ``load_kwargs`` go to ``datasets.load_dataset``
    (e.g. ``cache_dir``).
    """
    import datasets  # heavy import, and an optional dependency: only when used

    name = os.fspath(path_or_name)
    builder, extra = name, {}
    suffix = Path(name).suffix.lower()
    if data_files is None and suffix in _HF_BUILDERS:
        _require_local_files([name], split)
        builder, extra = _HF_BUILDERS[suffix]
        data_files = {split: name}
    elif data_files is not None:
        _require_local_files(_flatten_data_files(data_files), split)
    is_local = data_files is not None or Path(name).is_dir()
    try:
        ds = datasets.load_dataset(
            builder, data_files=data_files, split=split, **extra, **load_kwargs
        )
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        if is_local:
            hint = ""
        else:
            hint = (
                " Hub names need network access to the Hugging Face Hub (or a local HF cache);"
                " offline, pass a local file instead, e.g. hf_dataset('train.csv', 'train')."
            )
        raise DataError(
            f"could not load HF dataset {name!r} split {split!r}: {err}.{hint}"
        ) from err
    where = f"split {split!r} of HF dataset {name!r}"
    if data_files is not None:
        where += f" (data_files={data_files!r})"
    if len(ds) == 0:
        raise EmptySplitError(f"{where} is empty")
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise MissingColumnError(
            f"column(s) {missing} missing in {where}; available columns: {ds.column_names}"
        )
    return ds


def _flatten_data_files(data_files: str | Sequence[str] | Mapping[str, Any]) -> list[str]:
    if isinstance(data_files, (str, os.PathLike)):
        return [os.fspath(data_files)]
    if isinstance(data_files, Mapping):
        return [f for v in data_files.values() for f in _flatten_data_files(v)]
    return [os.fspath(f) for f in data_files]


def _require_local_files(files: Sequence[str], split: str) -> None:
    for file in files:
        if "://" in file or any(ch in file for ch in "*?["):
            continue  # URLs and globs are the builder's business
        path = Path(file)
        if not path.exists():
            raise MissingFileError(f"data file not found: {file}")
        # datasets' json builder dies with a bare StopIteration on an empty file.
        if path.is_file() and path.stat().st_size == 0:
            raise EmptySplitError(f"data file {file} (split {split!r}) is empty")


# --------------------------------------------------------------------------------------------
# tensorflow-datasets


def tfds_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> "PlainRecords":
    """A ``tfds.data_source`` split, with bytes decoded to str and 0-d arrays to scalars.

    Needs the dataset prepared in array_record format under ``data_dir`` (tfds' default dir
    when None); ``download=True`` lets tfds download and prepare it (network). No TensorFlow.
    """
    import tensorflow_datasets as tfds  # heavy import, optional dependency: only when used

    where = f"split {split!r} of tfds dataset {name!r} (data_dir={data_dir})"
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception as err:  # tfds raises many unrelated types for "not available here"
        raise DataError(_tfds_failure(tfds, name, data_dir, where, err)) from err
    if len(source) == 0:
        raise EmptySplitError(f"{where} is empty")
    return PlainRecords(source)


def _tfds_failure(tfds, name: str, data_dir, where: str, err: Exception) -> str:
    """Why ``tfds.data_source`` failed, in words: its own messages mislead when offline."""
    if isinstance(err, tfds.core.registered.DatasetNotFoundError):
        return f"cannot open {where}: tfds has no dataset named {name!r}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared, location = builder.is_prepared(), builder.data_dir
    except Exception:  # fall back to tfds' own message
        prepared, location = True, None
    if not prepared:
        return (
            f"cannot open {where}: it is not prepared under {location}. Prepare it where the "
            f"data can be downloaded (`tfds build {name} --file_format=array_record "
            f"--data_dir=...`), or pass download=True."
        )
    reason = str(err).strip().split("\n")[0]  # tfds may append a long list of datasets
    return f"cannot open {where}: {type(err).__name__}: {reason}"


class PlainRecords:
    """Wraps a record source so records hold plain Python values (str, int, float).

    tfds yields text as bytes and scalars as 0-d numpy arrays; tasks expect str and int.
    """

    def __init__(self, source: Sequence[Record]):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {key: _plain(value) for key, value in self._source[index].items()}

    def __repr__(self) -> str:
        return f"PlainRecords({self._source!r})"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _plain(value.item())
    return value
