"""Resolve asset names (pretrained models, corpora) to local files (see shared/ASSETS.md).

Command line: ``python -m ftjax.assets fetch NAME [NAME ...]`` and ``python -m ftjax.assets list``.
"""

from ftjax.assets.fetching import AssetError, cache_root, fetch, resolve
from ftjax.assets.registry import ASSETS, Asset

__all__ = ["ASSETS", "Asset", "AssetError", "cache_root", "fetch", "resolve"]
