"""Units of the strategy and the gates: parse what people type (``2m``, ``1%``) and format
values back (pure)."""

from __future__ import annotations

import math
import re

from edgekit.errors import ThresholdRangeError

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | float, *, flag: str = "duration") -> float:
    """``"2m"``, ``"90s"``, ``"1h30m"``, ``"500ms"`` or plain seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        try:
            seconds = float(raw)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_RE.finditer(raw):
                if match.start() != pos:
                    break
                value, unit = float(match.group(1)), match.group(2)
                seconds += value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
                pos = match.end()
            if pos != len(raw) or not raw:
                raise ThresholdRangeError(f"{flag} {text!r} is not a duration",
                                          hint="use e.g. 30s, 2m, 1h30m") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ThresholdRangeError(f"{flag} {text!r} must be a duration ≥ 0")
    return seconds


def parse_fraction(text: str | float, *, flag: str, allow_above_one: bool = False) -> float:
    """``"1%"`` -> 0.01; a bare number is a fraction (``0.01``). Out of range -> ThresholdRangeError."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ThresholdRangeError(f"{flag} {text!r} is not a percentage",
                                  hint="use e.g. 1% or 0.01") from None
    if not math.isfinite(value) or value < 0 or (value > 1 and not allow_above_one):
        limit = "0% and 100%" if not allow_above_one else "0% and 1000%"
        raise ThresholdRangeError(f"{flag} {text!r} is out of range: give a value between {limit}",
                                  hint="a bare number is a fraction; 5% and 0.05 are the same")
    return value


# --- formatting ------------------------------------------------------------------------------

def fmt_percent(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{fmt_number(round(value * 100, 2))}%"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{fmt_number(round(seconds, 1))}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def spec_duration(seconds: float) -> str:
    """Seconds in the CRD's duration syntax (``90s``, ``1.5s``, ``250ms``)."""
    if seconds and seconds < 1:
        return f"{fmt_number(round(seconds * 1000, 3))}ms"
    return f"{fmt_number(round(seconds, 3))}s"


def fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
