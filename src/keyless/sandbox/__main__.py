"""`python -m keyless.sandbox serve --state-dir DIR`: the sandbox process that `keyless sandbox up` starts."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from keyless.sandbox.stack import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m keyless.sandbox")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--knobs", type=json.loads, default={},
                        help="knob settings as JSON, as POST /knobs takes them (latency, rateLimits, timeScale, ...)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.state_dir, args.knobs)


if __name__ == "__main__":
    main()
