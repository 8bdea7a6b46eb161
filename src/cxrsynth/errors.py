"""One exception type for every user-facing failure.

Every error a user can cause (missing file, corrupt image, wrong CSV, overlapping patients,
unsafe checkpoint) is raised as :class:`CxrsynthError` with a message that names the problem
and a ``fix`` that says what to do. The CLI prints both and exits with status 2; Python callers
can catch the one type.
"""

from __future__ import annotations


class CxrsynthError(Exception):
    """A problem with the user's input or environment, with the way to fix it.

    Args:
        problem: what is wrong, naming the file or setting concerned.
        fix: what the user should do about it (may be empty when obvious).
    """

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)
