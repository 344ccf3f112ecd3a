"""Durations as people write them on a command line or in a knob: `50ms`, `0.2s`, `30s`, `5m`, `1h`, or bare seconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from `50ms`, `0.2s`, `2m`, `1h` or a bare number of seconds; ValueError for anything else."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (write e.g. 50ms, 0.2s, 30s, 5m or a number of seconds)")
    return float(match[1]) * _UNITS[match[2]]
