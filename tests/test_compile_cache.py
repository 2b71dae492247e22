"""The command line keeps jax's compiled programs between starts: a second `ftjax train` of
the same experiment compiles nothing, and FTJAX_COMPILE_CACHE=off keeps no cache."""

import os
import subprocess
import sys
from pathlib import Path

from ftjax.parallel.compile_cache import compile_cache_dir

REPO = Path(__file__).resolve().parents[1]
RUN = ["--set", "steps=2", "--set", "eval_every=2", "--set", "checkpoint_every=2", "--quiet"]


def _train(config, workdir, cache: str):
    env = {**os.environ, "FTJAX_COMPILE_CACHE": cache, "PYTHONPATH": str(REPO),
           # Tiny programs compile fast; jax caches only slower ones by default.
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "ftjax.cli", "train", str(config),
                           "--workdir", str(workdir), *RUN], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _entries(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


def test_a_second_start_loads_every_program_from_the_cache(tiny_config_file, tmp_path):
    cache = tmp_path / "xla"
    _train(tiny_config_file, tmp_path / "first", str(cache))
    first = _entries(cache)
    assert len(first) >= 2  # at least the train and eval steps
    _train(tiny_config_file, tmp_path / "second", str(cache))
    assert _entries(cache) == first  # nothing compiled, nothing written again



def test_the_cache_directory_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("FTJAX_CACHE", str(tmp_path))
    monkeypatch.delenv("FTJAX_COMPILE_CACHE", raising=False)
    assert compile_cache_dir() == tmp_path / "xla"
    monkeypatch.setenv("FTJAX_COMPILE_CACHE", "OFF")
    assert compile_cache_dir() is None
    assert compile_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
