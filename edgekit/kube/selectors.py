"""Kubernetes label selectors: parse (with a clear error), format, match, and turn into node affinity."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgekit.errors import SelectorError

__all__ = ["Requirement", "format_selector", "matches", "parse_selector", "to_match_expressions"]

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_KEY = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")
_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_CMP = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)$")

_AFFINITY_OP = {"=": "In", "!=": "NotIn", "in": "In", "notin": "NotIn", "exists": "Exists",
                "!": "DoesNotExist"}


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # != and notin match a missing key too

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"label selector {text!r} does not parse: unbalanced ')'")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise SelectorError(f"label selector {text!r} does not parse: unbalanced '('")
    parts.append(cur)
    return [p.strip() for p in parts]


def _check_key(key: str, text: str) -> str:
    if not _KEY.match(key) or len(key.rpartition("/")[0]) > 253:
        raise SelectorError(f"label selector {text!r} does not parse: invalid key {key!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if not _VALUE.match(value):
        raise SelectorError(f"label selector {text!r} does not parse: invalid value {value!r}")
    return value


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """Parse ``a=b,c!=d,e in (f,g),h notin (i),j,!k`` (the API server's selector syntax)."""
    if not text.strip():
        raise SelectorError("empty label selector (it would match every node)")
    out: list[Requirement] = []
    for term in _split(text):
        if not term:
            raise SelectorError(f"label selector {text!r} does not parse: empty term")
        if m := _SET.match(term):
            values = tuple(v.strip() for v in m["values"].split(","))
            if not values or any(not v for v in values):
                raise SelectorError(f"label selector {text!r} does not parse: empty value list in {term!r}")
            out.append(Requirement(_check_key(m["key"], text), m["op"],
                                   tuple(_check_value(v, text) for v in values)))
        elif m := _CMP.match(term):
            op = "=" if m["op"] in ("=", "==") else "!="
            out.append(Requirement(_check_key(m["key"], text), op, (_check_value(m["value"], text),)))
        elif term.startswith("!"):
            out.append(Requirement(_check_key(term[1:].strip(), text), "!"))
        elif re.fullmatch(r"\S+", term):
            out.append(Requirement(_check_key(term, text), "exists"))
        else:
            raise SelectorError(f"label selector {text!r} does not parse at {term!r}")
    return tuple(out)


def format_selector(reqs: tuple[Requirement, ...]) -> str:
    return ",".join(str(r) for r in reqs)


def matches(reqs: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in reqs)


def to_match_expressions(reqs: tuple[Requirement, ...]) -> list[dict[str, Any]]:
    """Node-affinity ``matchExpressions`` equivalent to the selector."""
    out: list[dict[str, Any]] = []
    for r in reqs:
        expr: dict[str, Any] = {"key": r.key, "operator": _AFFINITY_OP[r.op]}
        if r.values:
            expr["values"] = list(r.values)
        out.append(expr)
    return out
