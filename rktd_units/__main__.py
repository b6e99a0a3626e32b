"""`python3 -m rktd_units` runs the `rktd` command."""

import sys

from rktd_units.cli import main

sys.exit(main())
