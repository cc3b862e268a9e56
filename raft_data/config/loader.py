"""Loading a Config: YAML file, `section.key=value` overrides, type checks, and the config hash.

Precedence: dataclass defaults < YAML file < `section.key=value` overrides from the command line.
An unknown key or a bad value is a `ConfigError` that names the key and the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from raft_data.config.sections import SECTIONS, Config
from raft_data.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML as people write it: `2e-5` is a float (YAML 1.1 would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict:
    """A mapping whose keys are each written once: YAML would keep the last of two silently."""
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise ConfigError(f"key {key!r} is written twice (line {key_node.start_mark.line + 1}); keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only


# ---------------------------------------------------------------------------------------------------------------------
# Building a Config from plain data, with type checks.


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a field annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} is invalid: expected a mapping")
        return dict(value)
    if origin is list or annotation is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} is invalid: expected a list")
        return list(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} is invalid: expected a number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is invalid: expected an integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is invalid: expected true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} is invalid: expected a string")
        return value
    return value


def _build_section(name: str, cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]}: {name} takes {', '.join(sorted(known))}")
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from nested plain data (as read from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS) - {"sft"})
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}: sections are {', '.join([*SECTIONS, 'sft'])}")
    for name in [*SECTIONS, "sft"]:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ConfigError(f"section {name}={data[name]!r} is invalid: expected a mapping")
    sections = {name: _build_section(name, cls, data.get(name) or {}) for name, cls in SECTIONS.items()}
    return Config(**sections, sft=dict(data.get("sft") or {}))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`generate.n_samples=8` -> (["generate", "n_samples"], 8). Values are read as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key or key.count(".") != 1:
        raise ConfigError(f"override {text!r} is invalid: expected section.key=value, e.g. generate.n_samples=8")
    try:
        value = read_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults < YAML file < overrides. Relative paths in the file stay relative to the working directory."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = read_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in SECTIONS and section != "sft":
            raise ConfigError(f"unknown section in override {text!r}: sections are {', '.join([*SECTIONS, 'sft'])}")
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        data[section][key] = value
    return config_from_dict(data)


def derived_seed(*parts: Any, hex_digits: int = 8) -> int:
    """A seed that depends on nothing but `parts` (the experiment seed, then what it is for: a round and shard, the
    eval, a row): the first `hex_digits` hex digits of the SHA-256 of the parts joined by ':'."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:hex_digits], 16)


def config_hash(data: Any) -> str:
    """A short, stable hash of JSON-able data (sorted keys), used to refuse mixing artifacts of two configs."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
