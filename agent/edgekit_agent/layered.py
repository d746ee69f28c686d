"""Typed, frozen settings built from layers: defaults < config file < environment < flags.

Settings are plain frozen dataclasses. ``load_layered`` fills one from a JSON (or, when PyYAML is
installed, YAML) file, then ``PREFIX_FIELD`` environment variables, then explicit overrides, and
converts every value to the field's declared type. A bad value raises ``ConfigError`` naming the
field, so a CLI can print one line and exit 2. A renamed setting is still read under its former
name (file key, ``PREFIX_OLD`` variable, override) with a ``DeprecationWarning`` and a log line;
the new name wins when both are set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from edgekit_agent import safejson
from edgekit_agent.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger("edgekit_agent")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON or YAML mapping; field names may use ``-`` or ``_``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}", field="config") from exc
    data: Any
    if p.suffix in {".yaml", ".yml"}:
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - yaml is optional on devices
            raise ConfigError("YAML config needs PyYAML; use JSON", field="config") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}", field="config") from exc
    else:
        try:
            data = safejson.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p} is not valid JSON: {exc.msg} at line {exc.lineno}", field="config") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of settings", field="config")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _convert(field: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or value == ""):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(field, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"invalid value {value!r}", field=field)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"expected true/false, got {value!r}", field=field)
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"expected a number, got {value!r}", field=field)
        try:
            return tp(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"expected {'an integer' if tp is int else 'a number'}, got {value!r}", field=field
            ) from exc
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"expected a string, got {type(value).__name__}", field=field)
        return str(value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", field=field)
        inner = args[0] if args else str
        return tuple(
            _convert(field, item.strip() if isinstance(item, str) else item, inner)
            for item in items
            if not (isinstance(item, str) and not item.strip())
        )
    return value


def parse_bool(field: str, value: Any) -> bool:
    """A true/false setting as the layers read it (for a flag that also reads its variable alone)."""
    return bool(_convert(field, value, bool))


def _deprecated(old: str, new: str, where: str) -> None:
    text = f"setting {old}{where and ' in ' + where} is deprecated: use {new}"
    warnings.warn(text, DeprecationWarning, stacklevel=5)
    log.warning("%s", text)


def load_layered(
    cls: type[T],
    *,
    file: str | os.PathLike[str] | None = None,
    env_prefix: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    renamed: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from defaults < file < environment < overrides (``None`` overrides are skipped).

    ``renamed`` maps former setting names to current ones; values under a former name are used
    (unless the current name is set in the same layer) and reported as deprecated."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed = renamed or {}
    raw: dict[str, Any] = {}

    def layer(values: Mapping[str, Any], where: str, spell: typing.Callable[[str], str]) -> None:
        for key, value in values.items():
            new = renamed.get(key)
            if new is not None:
                _deprecated(spell(key), spell(new), where)
                if new in values:
                    continue
                key = new
            if key not in fields:
                raise ConfigError(f"unknown setting{where and ' in ' + where}", field=key)
            raw[key] = value

    if file is not None:
        layer(read_config_file(file), str(file), str)
    if env_prefix:
        environ = os.environ if env is None else env
        names = [*fields, *renamed]
        found = {name: environ[f"{env_prefix}{name.upper()}"] for name in names
                 if f"{env_prefix}{name.upper()}" in environ}
        layer(found, "the environment", lambda name: f"{env_prefix}{name.upper()}")
    layer({k: v for k, v in (overrides or {}).items() if v is not None}, "", str)
    values = {k: _convert(k, v, hints[k]) for k, v in raw.items()}
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    return obj
