"""Experiment configs: ml_collections ConfigDicts in Python files, strictly checked.

An experiment file defines `get_config()` returning a ConfigDict built on `ftjax.train.defaults
.base_config()` (big_vision style: the file's docstring holds the command that runs it and the
result it should reach); `path.py:arg` calls `get_config(arg)` instead, for files that hold several
variants. `load_config(path, overrides)` imports it, applies `--set key=value` overrides, and
checks the result against the schema of the base config:

- a key the schema lacks is an error naming the closest valid key;
- a value whose type differs from the schema's is an error naming the key and both types;
- values are validated by `ftjax.train.defaults.validate` (ranges, enumerations).

The returned config is locked: code that reads a mistyped key fails instead of inventing it.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from pathlib import Path
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what was expected."""


def _flatten(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def closest_key(key: str, valid: list[str]) -> str:
    """A hint naming the closest valid key, matching on the full dotted path or its last part."""
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not match:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        match = [by_leaf[leaf_match[0]]] if leaf_match else []
    return f"; did you mean {match[0]!r}?" if match else ""


def _schema_type(value: Any) -> tuple[type, ...]:
    if isinstance(value, bool):
        return (bool,)
    if isinstance(value, int):
        return (int,)
    if isinstance(value, float):
        return (float, int)  # an int where a float is expected is fine (lr=1)
    return (type(value),)


def check_against_schema(cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                         where: str) -> None:
    """Every key of `cfg` exists in `schema` with a compatible type."""
    flat, valid = _flatten(cfg), _flatten(schema)
    errors = []
    for key, value in flat.items():
        if key not in valid:
            errors.append(f"unknown key {key!r}{closest_key(key, list(valid))}")
            continue
        expected = valid[key]
        if value is None or expected is None:
            continue  # None is the schema's "unset" for optional keys
        allowed = _schema_type(expected)
        if isinstance(value, bool) != (bool in allowed) or not isinstance(value, allowed):
            errors.append(
                f"{key!r} must be {allowed[0].__name__}, got {type(value).__name__} ({value!r})"
            )
    if errors:
        raise ConfigError(f"{where}: " + "; ".join(errors))


def _fill_missing(cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict) -> None:
    """Add the schema's defaults for keys the file left out, so every config has every key."""
    with cfg.unlocked():
        for key in schema.keys():
            if key not in cfg:
                cfg[key] = schema[key]
            elif isinstance(schema[key], ml_collections.ConfigDict):
                _fill_missing(cfg[key], schema[key])


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
                    schema: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    valid = _flatten(schema)
    for text in overrides:
        key, value = parse_override(text)
        if key not in valid:
            raise ConfigError(f"--set {text}: unknown key {key!r}{closest_key(key, list(valid))}")
        expected = valid[key]
        if isinstance(expected, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(expected, str) and not isinstance(value, str) and value is not None:
            value = str(value)  # `--set method=1` style strings that happen to parse
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        try:
            with node.unlocked():
                node[leaf] = value
        except (TypeError, ValueError) as err:
            raise ConfigError(f"--set {text}: {err}") from None
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


def import_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    path, arg = split_config_arg(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"ftjax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: report where it broke
        raise ConfigError(f"{path}: failed to import: {type(err).__name__}: {err}") from err
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


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Import an experiment file, apply overrides, check it fully; returns a locked ConfigDict."""
    from ftjax.train.defaults import base_config, validate

    schema = base_config()
    cfg = import_config_file(path)
    check_against_schema(cfg, schema, str(path))
    _fill_missing(cfg, base_config())
    merged = apply_overrides(cfg, list(overrides), schema)
    check_against_schema(merged, schema, f"{path} (after overrides)")
    validate(merged)
    merged.lock()
    return merged


def config_from_dict(values: dict, where: str) -> ml_collections.ConfigDict:
    """Rebuild a run's config from its saved `config.json` (cfg.to_dict()), fully checked.

    JSON turns tuples into lists; the schema says which keys are tuples, so they come back as such.
    """
    from ftjax.train.defaults import base_config, validate

    schema = base_config()
    flat_schema = _flatten(schema)
    cfg = base_config()

    def assign(node, prefix, mapping):
        for key, value in mapping.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
                assign(node[key], path + ".", value)
                continue
            if path not in flat_schema:
                raise ConfigError(f"{where}: unknown key {path!r}{closest_key(path, list(flat_schema))}")
            if isinstance(flat_schema[path], tuple) and isinstance(value, list):
                value = tuple(value)
            try:
                node[key] = value
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{where}: {path}: {err}") from None

    assign(cfg, "", values)
    validate(cfg)
    cfg.lock()
    return cfg
