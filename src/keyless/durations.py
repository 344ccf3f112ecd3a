"""Durations as people write them on a command line, in a knob or a spec: `50ms`, `0.2s`, `5m`, `1h30m`, or seconds."""

from __future__ import annotations

import re

# One or more number-unit parts, as Kubernetes and Go write them (`1h30m`), or one bare number of seconds.
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_BARE = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from `50ms`, `0.2s`, `2m`, `1h`, `1h30m` or a bare number of seconds; ValueError for anything else."""
    value = text.strip()
    if _BARE.fullmatch(value):
        return float(value)
    if value and _PART.sub("", value) == "":
        return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(value))
    raise ValueError(f"not a duration: {text!r} (write e.g. 50ms, 0.2s, 30s, 5m, 1h30m or a number of seconds)")
