"""A config schema written once: frozen dataclasses whose fields carry their help text.

Every block of a config (`optimizer`, `lora`, `task`, ...) is a frozen dataclass of `setting(...)`
fields, kept beside the code that reads it; the run's root block (ftjax.train.config.RunConfig)
nests them. Everything else is derived from those fields:

- `Schema(root).defaults()`: the ml_collections ConfigDict an experiment file starts from
  (optional keys as typed placeholders, so a wrong type fails where it is assigned);
- `check`: unknown keys (with the closest valid one) and wrong types, named by dotted key;
- `override`: `--set key=value`, parsed to the key's type;
- `build`: the typed tree of block instances, every block's own value checks (__post_init__)
  reported with its key;
- `describe`: every key with its value and help, for `ftjax config show`.

Field types: bool, int, float (an int is accepted), str, `X | None`, `Literal[...]` (a str with
choices), `tuple[...]`, a nested block, or `Mapping[str, Block]`: a block per name that the
config chooses (`sources.polarity`, `losses.kd`), whose type may depend on the entry
(`setting(entry=...)`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Callable

import ml_collections
from ml_collections import config_dict

from ftjax.settings.errors import ConfigError

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            choices: tuple | None = None, config: bool = True,
            entry: Callable[[str, Mapping], type] | None = None) -> Any:
    """A block field with its help text.

    factory: builds the default (nested blocks, maps, any mutable default).
    choices: the values a str field accepts.
    config: False for a field the code sets, never a config key (an adapter's `kind`, set by
      the method).
    entry: for a Mapping field, the block type of one entry from its name and values (entries
      of different kinds); default: the mapping's annotated value type.
    """
    metadata = {"help": help, "choices": choices, "config": config, "entry": entry}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Key:
    """One field of a block as the schema sees it."""

    name: str
    kind: str  # "value" | "block" | "map"
    type: Any  # the value's Python type(s) ("value"), the block class ("block", "map")
    optional: bool
    default: Any
    help: str
    choices: tuple | None
    entry: Callable[[str, Mapping], type] | None = None


def is_block(cls: Any) -> bool:
    return isinstance(cls, type) and dataclasses.is_dataclass(cls)


def _value_type(annotation: Any) -> tuple[Any, bool, tuple | None]:
    """(python type, optional, choices) of a value annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {annotation!r}: use one type or X | None")
        inner, _, choices = _value_type(args[0])
        return inner, True, choices
    if origin is typing.Literal:
        return str, False, tuple(typing.get_args(annotation))
    if origin is tuple or annotation is tuple:
        return tuple, False, None
    if annotation in (bool, int, float, str):
        return annotation, False, None
    raise TypeError(f"unsupported setting type {annotation!r}")


def block_keys(cls: type) -> list[Key]:
    """The config keys of block `cls`, in field order."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("config", True) or not f.init:
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        annotation = hints[f.name]
        origin = typing.get_origin(annotation)
        common = dict(name=f.name, default=default, help=meta.get("help", ""),
                      choices=meta.get("choices"))
        if is_block(annotation):
            keys.append(Key(kind="block", type=annotation, optional=False, **common))
        elif origin in (Mapping, dict, typing.Mapping):
            value_cls = typing.get_args(annotation)[1]
            keys.append(Key(kind="map", type=value_cls, optional=False, entry=meta.get("entry"),
                            **common))
        else:
            python_type, optional, choices = _value_type(annotation)
            keys.append(Key(kind="value", type=python_type, optional=optional,
                            **{**common, "choices": common["choices"] or choices}))
    return keys


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not match:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        match = [by_leaf[leaf_match[0]]] if leaf_match else []
    return f"; did you mean {match[0]!r}?" if match else ""


def closest_key(key: str, valid: list[str]) -> str:
    """A hint naming the closest valid key, matching on the full dotted path or its last part."""
    return _closest(key, valid)


def _type_name(key: Key) -> str:
    return key.type.__name__ + (" or None" if key.optional else "")


def _accepts(key: Key, value: Any) -> bool:
    if value is None:
        return key.optional
    if key.type is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if key.type is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if key.type is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, key.type)


class Schema:
    """Everything about a config that follows from its root block class."""

    def __init__(self, root: type):
        if not is_block(root):
            raise TypeError(f"a schema's root must be a dataclass, got {root!r}")
        self.root = root

    # ----------------------------------------------------------------------------------------
    # The ConfigDict side

    def defaults(self) -> ml_collections.ConfigDict:
        """A fresh ConfigDict holding every key's default."""
        return _defaults(self.root, None)

    def fill(self, cfg: ml_collections.ConfigDict) -> None:
        """Add the default of every key `cfg` leaves out (map entries included), in place."""
        _fill(cfg, self.root)

    def check(self, cfg: ml_collections.ConfigDict, where: str) -> None:
        """Unknown keys and wrong types, all of them in one ConfigError."""
        errors: list[str] = []
        _check(cfg, self.root, "", errors)
        if errors:
            raise ConfigError(f"{where}: " + "; ".join(errors))

    def keys(self, cfg: ml_collections.ConfigDict | None = None) -> dict[str, Key]:
        """Dotted key -> Key for every value key; map entries that `cfg` has are included."""
        out: dict[str, Key] = {}
        _collect(self.root, "", cfg, out)
        return out

    def override(self, cfg: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
        """Set `key` (dotted) to `value` converted to its type; a missing map entry is created."""
        self._ensure_entry(cfg, key)
        known = self.keys(cfg)
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}{_closest(key, list(known))}")
        spec = known[key]
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if spec.type is str and value is not None and not isinstance(value, str):
            value = str(value)  # `--set method=1` style strings that happen to parse
        if spec.type is tuple and isinstance(value, list):
            value = tuple(value)
        if not _accepts(spec, value):
            raise ConfigError(f"{where}: {key!r} must be {_type_name(spec)}, got "
                              f"{type(value).__name__} ({value!r})")
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        try:
            with node.unlocked():
                node[leaf] = value
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None

    def _ensure_entry(self, cfg: ml_collections.ConfigDict, key: str) -> None:
        """`sources.new.kind=...`: create map entry `new` (with its defaults) before setting."""
        parts = key.split(".")
        node, cls = cfg, self.root
        for i, part in enumerate(parts[:-1]):
            spec = {k.name: k for k in block_keys(cls)}.get(part)
            if spec is None or spec.kind == "value":
                return
            if spec.kind == "block":
                if part not in node:  # a block of a map entry just created
                    with node.unlocked():
                        node[part] = ml_collections.ConfigDict()
                node, cls = node[part], spec.type
                continue
            entries = node[part]
            name = parts[i + 1]
            if name not in entries and i + 2 < len(parts):
                with entries.unlocked():
                    entries[name] = ml_collections.ConfigDict()
            if name not in entries:
                return
            node, cls = entries[name], _entry_type_or_base(spec, name, entries[name])
            parts_left = parts[i + 2:]
            if len(parts_left) <= 1:
                return
            return Schema(cls)._ensure_entry(node, ".".join(parts_left))

    # ----------------------------------------------------------------------------------------
    # The typed side

    def build(self, cfg: Any, where: str = "config") -> Any:
        """The root block instance of `cfg` (ConfigDict or mapping); a value a block rejects
        becomes a ConfigError naming its key."""
        return _build(self.root, cfg, "", where)

    def describe(self, cfg: ml_collections.ConfigDict) -> list[tuple[str, Any, str]]:
        """(dotted key, value, help) of every key, in schema order."""
        return [(path, _get(cfg, path), key.help) for path, key in self.keys(cfg).items()]


def _entry_type(key: Key, name: str, values: Any) -> type:
    values = values.to_dict() if hasattr(values, "to_dict") else dict(values or {})
    return key.entry(name, values) if key.entry is not None else key.type


def _entry_type_or_base(key: Key, name: str, values: Any) -> type:
    """The entry's type, or the map's own value type while the entry does not say yet (an
    override creating `losses.new` sets its `kind` first); `check` reports a bad entry."""
    try:
        return _entry_type(key, name, values)
    except (ValueError, KeyError, ImportError):
        return key.type


def _placeholder(key: Key) -> Any:
    if key.default is None and key.optional:
        return config_dict.placeholder(key.type)
    return key.default


def _defaults(cls: type, instance: Any) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for key in block_keys(cls):
        value = getattr(instance, key.name) if instance is not None else key.default
        if key.kind == "block":
            c[key.name] = _defaults(key.type, value)
        elif key.kind == "map":
            c[key.name] = ml_collections.ConfigDict()
            for name, entry in (value or {}).items():
                c[key.name][name] = _defaults(type(entry), entry)
        else:
            c[key.name] = _placeholder(dataclasses.replace(key, default=value))
    return c


def _fill(cfg: ml_collections.ConfigDict, cls: type) -> None:
    with cfg.unlocked():
        for key in block_keys(cls):
            if key.name not in cfg:
                if key.kind == "block":
                    cfg[key.name] = _defaults(key.type, key.default)
                elif key.kind == "map":
                    cfg[key.name] = _defaults(cls, None)[key.name]
                else:
                    cfg[key.name] = _placeholder(key)
            elif key.kind == "block":
                _fill(cfg[key.name], key.type)
            elif key.kind == "map":
                for name in list(cfg[key.name].keys()):
                    entry = cfg[key.name][name]
                    if isinstance(entry, ml_collections.ConfigDict):
                        _fill(entry, _entry_type_or_base(key, name, entry))


def _check(cfg: Any, cls: type, prefix: str, errors: list[str]) -> None:
    keys = {k.name: k for k in block_keys(cls)}
    for name in cfg.keys():
        path = f"{prefix}{name}"
        value = cfg[name]
        if name not in keys:
            valid = [f"{prefix}{k}" for k in keys]
            errors.append(f"unknown key {path!r}{_closest(path, valid)}")
            continue
        key = keys[name]
        if key.kind == "block":
            if not isinstance(value, (ml_collections.ConfigDict, Mapping)):
                errors.append(f"{path!r} is a block of keys, got {type(value).__name__}")
            else:
                _check(value, key.type, path + ".", errors)
        elif key.kind == "map":
            if not isinstance(value, (ml_collections.ConfigDict, Mapping)):
                errors.append(f"{path!r} maps names to blocks, got {type(value).__name__}")
                continue
            for entry_name in value.keys():
                entry = value[entry_name]
                if not isinstance(entry, (ml_collections.ConfigDict, Mapping)):
                    errors.append(f"{path}.{entry_name} must be a block of keys, got "
                                  f"{type(entry).__name__}")
                    continue
                try:
                    entry_cls = _entry_type(key, entry_name, entry)
                except (ValueError, KeyError, ImportError) as err:
                    errors.append(f"{path}.{entry_name}: {err.args[0] if err.args else err}")
                    continue
                _check(entry, entry_cls, f"{path}.{entry_name}.", errors)
        elif not _accepts(key, value):
            errors.append(f"{path!r} must be {_type_name(key)}, got {type(value).__name__} "
                          f"({value!r})")
        elif key.choices is not None and value is not None and value not in key.choices:
            errors.append(f"config key {path!r} is {value!r}; expected one of {key.choices}")


def _collect(cls: type, prefix: str, cfg: Any, out: dict[str, Key]) -> None:
    for key in block_keys(cls):
        path = f"{prefix}{key.name}"
        if key.kind == "block":
            # A map entry's nested block may be absent until one of its keys is set.
            _collect(key.type, path + ".", cfg[key.name] if cfg is not None and
                     key.name in cfg else None, out)
        elif key.kind == "map":
            entries = cfg[key.name] if cfg is not None and key.name in cfg else {}
            for name in entries.keys():
                _collect(_entry_type_or_base(key, name, entries[name]), f"{path}.{name}.",
                         entries[name], out)
        else:
            out[path] = key


def _get(cfg: Any, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        node = node[part]
    return node


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _build(cls: type, cfg: Any, prefix: str, where: str) -> Any:
    values = {}
    for key in block_keys(cls):
        if key.name not in cfg:
            continue
        value = cfg[key.name]
        path = f"{prefix}{key.name}"
        if key.kind == "block":
            values[key.name] = _build(key.type, value, path + ".", where)
        elif key.kind == "map":
            values[key.name] = {
                name: _build(_entry_type(key, name, value[name]), value[name],
                             f"{path}.{name}.", where)
                for name in value.keys()}
        else:
            values[key.name] = tuple(value) if key.type is tuple and value is not None else \
                _plain(value)
    try:
        return cls(**values)
    except (ValueError, TypeError, KeyError) as err:
        message = err.args[0] if err.args else err
        block = f"config block {prefix.rstrip('.')!r}: " if prefix else ""
        raise ConfigError(f"{where}: {block}{message}") from None
