"""`python -m keyless`: the same as the `keyless` command."""

from keyless.cli import main

main()
