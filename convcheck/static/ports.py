"""Whether a script binds a network port it chose itself: runs of it side by side would collide."""

from __future__ import annotations

import re

from convcheck.static.context import StaticContext

#: ``os.environ["MASTER_PORT"] = "12355"`` (a plain assignment overrides the launcher's free port;
#: ``setdefault`` does not), ``os.environ.update(MASTER_PORT=...)``, ``init_method="tcp://host:1234"``.
_FIXED_PORT = re.compile(
    r"""environ\s*\[\s*['"]MASTER_PORT['"]\s*\]\s*=(?!=)"""
    r"""|environ\.update\([^)]*MASTER_PORT"""
    r"""|tcp://[^'"\s]*:\d{2,5}""",
)


def binds_fixed_port(ctx: StaticContext) -> bool:
    """True when the script sets MASTER_PORT itself or rendezvous at a fixed tcp:// address."""
    return bool(_FIXED_PORT.search(ctx.source))
