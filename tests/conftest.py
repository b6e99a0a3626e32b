from __future__ import annotations

import os
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
VECTORS = SHARED / "vectors" / "appc"

# CI explores the same examples on every run (a submission lands or not on its own merits, never on a
# lucky draw); developers' runs stay random and keep finding new cases. Found cases go into @example.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
