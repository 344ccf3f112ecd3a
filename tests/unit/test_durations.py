"""Durations as people write them: one parser for the sandbox's knobs and `keyless apply --lock-timeout`."""

from __future__ import annotations

import pytest

from keyless.durations import parse_duration


def test_durations_in_every_unit() -> None:
    assert [parse_duration(t) for t in ("0", "50ms", "0.5s", "30s", "5m", "1h", " 2 ", "1h30m", "1m30s", "1.5h")] == [
        0.0, pytest.approx(0.05), 0.5, 30.0, 300.0, 3600.0, 2.0, 5400.0, 90.0, 5400.0]


@pytest.mark.parametrize("text", ["", "soon", "-1s", "5 minutes", "1d", "10m junk", "m10", "1h 30m", "10x"])
def test_anything_else_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a duration.*e\.g\. 50ms"):
        parse_duration(text)
