"""Experiment configs: ml_collections ConfigDicts in Python files, strictly checked.

An experiment file defines `get_config()` returning a ConfigDict built on `ftjax.train.config
.base_config()` (big_vision style: the file's docstring holds the command that runs it and the
result it should reach); `path.py:arg` calls `get_config(arg)` instead, for files that hold several
variants. `load_config(path, overrides)` imports it, applies `--set key=value` overrides, and
checks the result against the schema of the base config:

- a key the schema lacks is an error naming the closest valid key;
- a value whose type differs from the schema's is an error naming the key and both types;
- every block's own checks and the checks across blocks (`ftjax.train.config.validate`) run.

The returned config is locked: code that reads a mistyped key fails instead of inventing it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import ml_collections

from ftjax.settings.errors import ConfigError
from ftjax.settings.schema import Schema


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with value parsed as a Python literal where it is one, else as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str],
                    schema: Schema) -> ml_collections.ConfigDict:
    """`--set key=value` overrides, each converted to its key's type, in order."""
    for text in overrides:
        key, value = parse_override(text)
        schema.override(cfg, key, value, f"--set {text}")
    return cfg


def split_config_arg(path: str | os.PathLike) -> tuple[Path, str | None]:
    """`file.py:arg` -> (file.py, "arg"); a plain path -> (path, None).

    big_vision's convention: one file holds several variants of an experiment and
    `get_config(arg)` picks one (e.g. `experiments/paper_polarity.py:reduced`).
    """
    text = os.fspath(path)
    head, sep, arg = text.rpartition(":")
    if sep and head.endswith(".py") and not Path(text).is_file():
        return Path(head), arg
    return Path(text), None


def import_experiment_file(path: Path):
    """The module of an experiment file (its get_config, and a pipeline's get_stages)."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"ftjax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: report where it broke
        raise ConfigError(f"{path}: failed to import: {type(err).__name__}: {err}") from err
    return module


def import_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    path, arg = split_config_arg(path)
    module = import_experiment_file(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    try:
        cfg = module.get_config() if arg is None else module.get_config(arg)
    except (TypeError, AttributeError, KeyError, ValueError) as err:  # ConfigDict's own checks,
        # a get_config without an argument, or an unknown variant
        where = str(path) if arg is None else f"{path}:{arg}"
        raise ConfigError(f"{where}: get_config(): {err}") from err
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str], schema: Schema,
                validate: Callable[[Any], None]) -> ml_collections.ConfigDict:
    """Import an experiment file, apply overrides, check it against `schema` and `validate`
    (the checks across blocks); returns a locked ConfigDict with every key."""
    cfg = import_config_file(path)
    schema.check(cfg, str(path))
    schema.fill(cfg)
    merged = apply_overrides(cfg, list(overrides), schema)
    schema.check(merged, f"{path} (after overrides)")
    schema.fill(merged)  # keys of map entries the overrides created
    validate(merged)
    merged.lock()
    return merged


def config_from_dict(values: dict, where: str, schema: Schema,
                     validate: Callable[[Any], None]) -> ml_collections.ConfigDict:
    """Rebuild a config from a saved `cfg.to_dict()` (a run's config.json), fully checked.

    JSON turns tuples into lists; the schema says which keys are tuples, so they come back as such.
    """
    cfg = ml_collections.ConfigDict(values)
    schema.check(cfg, where)
    full = schema.defaults()
    schema.fill(cfg)
    for key, value in ((k, _get(cfg, k)) for k in schema.keys(cfg)):
        schema.override(full, key, value, where)
    validate(full)
    full.lock()
    return full


def _get(cfg, path: str):
    for part in path.split("."):
        cfg = cfg[part]
    return cfg
