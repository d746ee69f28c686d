"""``json.loads`` for input from the network or a file someone else wrote.

The standard decoder recurses once per nesting level and raises ``RecursionError`` (not a
``ValueError``) past the interpreter's limit, so ``[[[[…`` from a registry, a broker or a file
would escape every ``except ValueError`` and end as a traceback. Here it is a ``JSONDecodeError``
like any other bad JSON, so callers' existing error paths give it one line.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def loads(data: str | bytes | bytearray) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
