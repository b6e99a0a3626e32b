"""`python3 -m rktd_units` runs the `rktd` command."""

from rktd_units.cli import main

main()
