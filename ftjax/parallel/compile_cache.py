"""jax's persistent compilation cache for ftjax's command line.

A compiled program is stored under a key of the program and the platform, so a second start of
the same experiment (a resume, a rerun, the next pipeline stage with the same shapes, `ftjax
eval` after `ftjax train`) loads the programs instead of compiling them. jax reads the cache
directory once per process, at its first compilation, so the command line sets it at start,
before any compilation; a library caller (a notebook) sets jax's `jax_compilation_cache_dir`
itself if it wants one.

FTJAX_COMPILE_CACHE: a directory, or "off"; unset: `<FTJAX_CACHE or ~/.cache/ftjax>/xla`.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from ftjax.assets import cache_root

ENV = "FTJAX_COMPILE_CACHE"


def compile_cache_dir(setting: str | None = None) -> Path | None:
    """The cache directory a setting (else FTJAX_COMPILE_CACHE) names; None for "off"."""
    value = setting if setting is not None else os.environ.get(ENV, "")
    if value.strip().lower() == "off":
        return None
    return Path(value).expanduser() if value else cache_root() / "xla"


def enable_compile_cache(setting: str | None = None) -> Path | None:
    """Point this process's jax compilation cache at the directory (created); returns it, or
    None when switched off."""
    path = compile_cache_dir(setting)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
