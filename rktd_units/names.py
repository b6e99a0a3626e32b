"""The appc name types every part of the project checks: one definition of each.

Both are anchored with `\\A` and `\\Z`, never `^` and `$`: `$` also matches before a trailing
newline, so `re.match("^web$", "web\\n")` succeeds, and a name with a newline in it would reach
paths, unit files and command lines. With `\\Z`, `.match()`, `.search()` and `.fullmatch()` all
agree.
"""

from __future__ import annotations

import re

# AC Name (pods, apps, volumes, ports, networks): lower-case alphanumerics separated by single dashes.
AC_NAME_RE = re.compile(r"\A[a-z0-9]+(?:-[a-z0-9]+)*\Z")
# AC Identifier (image names, trust prefixes): lower-case alphanumerics separated by single -._~/
AC_IDENTIFIER_RE = re.compile(r"\A[a-z0-9]+(?:[-._~/][a-z0-9]+)*\Z")
