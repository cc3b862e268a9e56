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
from raft_data.errors import ConfigError, shown

# Limits on every YAML text read (config files, `key=value` overrides, sweep grid files). A config is a few KiB:
# these refuse only what is broken or hostile, before it can take much memory or stack. Aliases count as often as
# they are used, so a "billion laughs" document is refused while it is read, not when it is expanded.
MAX_YAML_BYTES = 1 << 20  # text of one file or override
MAX_YAML_DEPTH = 64  # collections inside collections, aliases expanded
MAX_YAML_SIZE = 100_000  # scalars, items and characters of scalars, aliases expanded


class _Loader(yaml.SafeLoader):
    """YAML as people write it: `2e-5` is a float (YAML 1.1 would read it as a string). Composed with the limits
    above: each node's size and depth with its aliases expanded is known as soon as the node is."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.measured: dict[int, tuple[int, int]] = {}  # id(node) -> (size, depth), aliases expanded
        self.total = 0  # the size of everything composed so far, aliases expanded: refused as soon as it is too big

    def count(self, size: int, line: int) -> None:
        self.total += size
        if self.total > MAX_YAML_SIZE:
            raise ConfigError(
                f"expands to more than {MAX_YAML_SIZE:,} items and characters (line {line}; aliases count each "
                "time they are used)"
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        line = self.peek_event().start_mark.line + 1
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self.measured:
                raise ConfigError(f"an alias stands inside the collection it names (line {line})")
            self.count(self.measured[id(node)][0], line)
            return node
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise ConfigError(f"nests more than {MAX_YAML_DEPTH} collections deep (line {line})")
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.ScalarNode):
            size, depth = 1 + len(node.value), 0
        else:
            children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
            parts = [self.measured[id(child)] for child in children]
            size, depth = 1 + sum(s for s, _ in parts), 1 + max((d for _, d in parts), default=0)
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"nests more than {MAX_YAML_DEPTH} collections deep once aliases expand (line {line})")
        self.count(1 + len(node.value) if isinstance(node, yaml.ScalarNode) else 1, line)
        self.measured[id(node)] = (size, depth)
        return node


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
        line = key_node.start_mark.line + 1
        try:
            twice = key in seen
        except TypeError:  # a list or a mapping as a key
            raise ConfigError(f"a key is a {type(key).__name__}, not a name (line {line})") from None
        if twice:
            raise ConfigError(f"key {shown(key)} is written twice (line {line}); keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(text: str) -> Any:
    """Plain data from YAML text (a SafeLoader: no objects, no code), within the limits above. Syntax errors are
    yaml.YAMLError; a limit or a value YAML cannot build (a date that does not exist, an integer of more than 4300
    digits) is a ConfigError."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"is {len(text):,} characters long, more than the limit of {MAX_YAML_BYTES:,}")
    try:
        return yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, ConfigError):
        raise
    except (ValueError, TypeError, OverflowError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"holds a value YAML cannot build: {first}") from None


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a small file the user names (`what`: "config file", "grid file"), at most MAX_YAML_BYTES;
    anything else is a ConfigError that names the file."""
    try:
        if not path.exists():
            raise ConfigError(f"{what} {path} does not exist")
        if not path.is_file():
            raise ConfigError(f"{what} {path} is not a file")
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{what} {str(path)[:300]} cannot be read: {e.strerror}") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {path} is larger than the limit of {MAX_YAML_BYTES:,} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


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
            raise ConfigError(f"{key}={shown(value)} is invalid: expected a mapping")
        return dict(value)
    if origin is list or annotation is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={shown(value)} is invalid: expected a list")
        return list(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={shown(value)} is invalid: expected a number")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key}={shown(value)} is invalid: expected a finite number") from None
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={shown(value)} is invalid: expected an integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={shown(value)} is invalid: expected true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={shown(value)} is invalid: expected a string")
        return value
    return value


def _build_section(name: str, cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise ConfigError(f"unknown key {name}.{str(unknown[0])[:100]}: {name} takes {', '.join(sorted(known))}")
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from nested plain data (as read from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS) - {"sft"}, key=str)
    if unknown:
        raise ConfigError(f"unknown section {shown(unknown[0])}: sections are {', '.join([*SECTIONS, 'sft'])}")
    for name in [*SECTIONS, "sft"]:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ConfigError(f"section {name}={shown(data[name])} is invalid: expected a mapping")
    sections = {name: _build_section(name, cls, data.get(name) or {}) for name, cls in SECTIONS.items()}
    return Config(**sections, sft=dict(data.get("sft") or {}))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`generate.n_samples=8` -> (["generate", "n_samples"], 8). Values are read as YAML scalars (or flow
    collections), within the limits of any YAML; text that is not YAML is kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key or key.count(".") != 1:
        raise ConfigError(f"override {text[:100]!r} is invalid: expected section.key=value, e.g. generate.n_samples=8")
    try:
        value = read_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    except ConfigError as e:
        raise ConfigError(f"override {key}=...: the value {e}") from None
    return key.split("."), value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults < YAML file < overrides. Relative paths in the file stay relative to the working directory."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = read_text_file(path, "config file")
        try:
            data = read_yaml(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in SECTIONS and section != "sft":
            raise ConfigError(
                f"unknown section in override {text[:100]!r}: sections are {', '.join([*SECTIONS, 'sft'])}"
            )
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise ConfigError(f"section {section}={shown(data[section])} is invalid: expected a mapping")
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
