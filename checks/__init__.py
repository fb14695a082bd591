"""The built-in checks, in code order."""

from __future__ import annotations

from convcheck.checks.cc100_unused_suppression import UnusedSuppression

ALL: list = [
    UnusedSuppression,
]
