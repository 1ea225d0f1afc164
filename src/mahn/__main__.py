"""`python -m mahn ...`: the same as the `mahn` command (and what `torchrun -m mahn` runs)."""

from mahn.cli import main

main()
