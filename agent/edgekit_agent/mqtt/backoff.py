"""Reconnect backoff: exponential, with "equal jitter" so that a fleet does not reconnect in step."""

from __future__ import annotations

import random

__all__ = ["Backoff", "backoff_delay"]


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Half fixed, half random, of ``lo * 2**attempt`` capped at ``hi``."""
    base = min(hi, lo * (2 ** min(attempt, 30)))
    return base / 2 + rng.uniform(0, base / 2)


class Backoff:
    """The delays of one run of failed attempts; ``reset()`` once a connection held."""

    def __init__(self, lo: float, hi: float, rng: random.Random | None = None) -> None:
        self.lo, self.hi = lo, hi
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = backoff_delay(self.attempt, self.lo, self.hi, self._rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
