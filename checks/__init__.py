"""The built-in checks, in code order."""

from __future__ import annotations

ALL: list = []
