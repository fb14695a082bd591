"""``convcheck fix-state-dict``: the command's options (the work is in statedict.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def fix_state_dict(
    checkpoint: Annotated[Path, typer.Argument(help="The checkpoint to repair.")],
) -> None:
    """Strip `module.` / `_orig_mod.` prefixes from the state_dicts in a checkpoint."""
    raise typer.Exit(2)
