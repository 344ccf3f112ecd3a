"""`python -m keyless.sandbox serve --state-dir DIR`: the sandbox process that `keyless sandbox up` starts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keyless.sandbox.stack import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m keyless.sandbox")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.state_dir)


if __name__ == "__main__":
    main()
