"""Building config dataclasses from YAML trees and `--set` overrides, with type checks.

`build_dataclass(cls, mapping)` checks every value against its field's annotation (int,
float, bool, str, `Literal[...]` choices, lists, nested dataclasses, `X | None`) and raises
`ConfigError` naming the dotted key, the bad value and, for unknown keys and choices, the
nearest valid one. `read_yaml` resolves `base_config:` (a path or list of paths relative to
the file; later values win). YAML is read with `yaml.safe_load`: tags such as
`!!python/object` are refused, never constructed.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pangu_ms.errors import ConfigError


def show(text: Any) -> str:
    """A user-given key or string for a one-line message: quoted as typed, or as a Python repr
    when it holds newlines or other unprintable characters."""
    text = str(text)
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


def require(ok: bool, name: str, value: Any, hint: str) -> None:
    """Raise a `ConfigError` for field `name` unless `ok`."""
    if not ok:
        raise ConfigError(f"{name}={value!r}: {hint}")


def _choice_error(key: str, value: Any, choices: tuple) -> ConfigError:
    lower = {str(c).lower(): c for c in choices}
    near = difflib.get_close_matches(str(value).lower(), list(lower), n=1)
    hint = f"; did you mean {lower[near[0]]!r}?" if near else ""
    return ConfigError(f"{key}={value!r}: use one of {', '.join(repr(c) for c in choices)}{hint}")


def check_choices(obj: Any) -> None:
    """Check every `Literal[...]` field of dataclass instance `obj` (direct construction too)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        if typing.get_origin(tp) is typing.Literal:
            value = getattr(obj, f.name)
            if value not in typing.get_args(tp):
                raise _choice_error(f.name, value, typing.get_args(tp))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp` and convert it; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        raise _choice_error(key, value, choices)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping of {tp.__name__} fields")
        return build_dataclass(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r}: expected a string")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def build_dataclass(cls: type, values: dict[str, Any], *, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            near = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean '{(prefix + '.') if prefix else ''}{near[0]}'?" if near else ""
            raise ConfigError(f"unknown key {show(key)}{hint} (valid: {', '.join(names)})")
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{exc}") from None


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (safe loader); ConfigError naming the file otherwise."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of {what}, got {type(raw).__name__}")
    return dict(raw)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: where and what (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
        return (f"not plain YAML{where}: {problem} (configs are read with yaml.safe_load: tags that would "
                "construct Python objects are refused; write the value as plain YAML)")
    return f"not valid YAML{where}: {problem}"


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file, resolving `base_config:` (relative to the file) first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: base_config cycle through {' -> '.join(str(p) for p in seen)}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = read_mapping(path, "sections")
    bases = raw.pop("base_config", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: base_config={bases!r}: give a file path or a list of paths, relative to this file")
    merged: dict[str, Any] = {}
    for b in bases:
        merged = deep_merge(merged, read_yaml(path.parent / b, seen + (path,)))
    return deep_merge(merged, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.field=value` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.field=value, e.g. --set parallel.mp=8")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"--set {text!r}: the key needs a section, e.g. train.steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to a raw config mapping (validated later with the rest)."""
    tree = dict(tree)
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for p in parts[:-1]:
            nxt = node.get(p)
            nxt = dict(nxt) if isinstance(nxt, dict) else {}
            node[p] = nxt
            node = nxt
        node[parts[-1]] = value
    return tree
