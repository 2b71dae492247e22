"""A store of adapters for one base: a directory of named adapter directories.

    <store>/<name>/adapter.json, adapter.safetensors   one ftjax adapter each (ftjax.io.adapter)

A run with an adapter per task writes its adapters as a store (WORKDIR/adapters); `ftjax
adapters list / add / remove` manage one; `ftjax generate --adapter-store` and
`load_adapters(store_adapters(store), base)` serve all of them on one base at once. Every
adapter of a store fits the same base (its shape fingerprint): adding one that does not is
refused, so a store never mixes bases.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

from ftjax.io.adapter import META_FILE, WEIGHTS_FILE, read_adapter_meta
from ftjax.io.atomic_dir import OutputExistsError, atomic_dir
from ftjax.io.loading import CheckpointError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class StoredAdapter:
    name: str
    path: Path
    base: str
    fingerprint: str
    method: str
    num_params: int
    num_bytes: int
    step: int | None


def list_store(store: str | os.PathLike) -> list[StoredAdapter]:
    """The adapters of a store, by name; a directory that is not an adapter is an error."""
    root = Path(store)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such adapter store (a directory of adapters)")
    entries = []
    for path in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not (path / META_FILE).is_file():
            raise CheckpointError(f"{path}: not an adapter directory (no {META_FILE}); a store "
                                  f"holds only adapters")
        meta = read_adapter_meta(path)
        entries.append(StoredAdapter(
            name=path.name, path=path, base=meta["base"]["name"],
            fingerprint=meta["base"]["fingerprint"], method=meta["method"],
            num_params=int(meta["num_params"]), num_bytes=(path / WEIGHTS_FILE).stat().st_size,
            step=meta.get("step")))
    return entries


def store_adapters(store: str | os.PathLike) -> dict[str, Path]:
    """{name: adapter directory} of a store, for load_adapters."""
    entries = list_store(store)
    if not entries:
        raise CheckpointError(f"{store}: the adapter store is empty")
    return {entry.name: entry.path for entry in entries}


def adapter_dir(path: str | os.PathLike) -> Path:
    """An adapter directory, or a run directory's adapter/ (what `ftjax train` writes)."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    if (path / "adapter" / META_FILE).is_file():
        return path / "adapter"
    raise FileNotFoundError(f"{path}: neither an adapter directory ({META_FILE}) nor a run "
                            f"directory with adapter/")


def add_to_store(store: str | os.PathLike, name: str, adapter: str | os.PathLike, *,
                 overwrite: bool = False) -> StoredAdapter:
    """Copy an adapter into the store as `name` (whole or not at all). The store is created
    if missing; an adapter for another base than the store's is refused, and so is an
    existing name unless `overwrite`."""
    if not NAME.fullmatch(name):
        raise ValueError(f"adapter name {name!r}: use letters, digits, '_', '.', '-'")
    source = adapter_dir(adapter)
    meta = read_adapter_meta(source)
    root = Path(store)
    root.mkdir(parents=True, exist_ok=True)
    others = [e for e in list_store(root) if e.name != name]
    if others and others[0].fingerprint != meta["base"]["fingerprint"]:
        raise CheckpointError(f"{source}: trained on {meta['base']['name']!r}, but the store "
                              f"{root} holds adapters of {others[0].base!r} (another shape "
                              f"fingerprint)")
    target = root / name
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: the store already holds an adapter {name!r} "
                                f"(remove it first, or overwrite)")
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for file in (META_FILE, WEIGHTS_FILE):
            shutil.copy2(source / file, tmp / file)
    return next(e for e in list_store(root) if e.name == name)


def remove_from_store(store: str | os.PathLike, name: str) -> None:
    """Delete adapter `name` from the store."""
    names = [e.name for e in list_store(store)]
    if name not in names:
        raise FileNotFoundError(f"{store}: no adapter {name!r} (the store holds "
                                f"{', '.join(names) or 'none'})")
    shutil.rmtree(Path(store) / name)
