"""`python -m keyless.sandbox serve --state-dir DIR`: the sandbox process that `keyless sandbox up` starts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keyless.sandbox.limits import RateLimits, SandboxKnobs
from keyless.sandbox.stack import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m keyless.sandbox")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each cloud request")
    parser.add_argument("--rate-limits", choices=[r.value for r in RateLimits], default=RateLimits.OFF.value)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.state_dir, SandboxKnobs(latency=args.latency, rate_limits=RateLimits(args.rate_limits),
                                       time_scale=args.time_scale))


if __name__ == "__main__":
    main()
