"""YAML for people: multi-line strings as blocks, no anchors, keys in manifest order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

__all__ = ["dump", "dump_all"]


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump(obj: Any, *, sort_keys: bool = False) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=sort_keys, default_flow_style=False, width=120)


def dump_all(objs: Iterable[Any], *, sort_keys: bool = False) -> str:
    return yaml.dump_all(list(objs), Dumper=_Dumper, sort_keys=sort_keys, default_flow_style=False,
                         width=120)
