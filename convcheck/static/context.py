"""The parsed script that static checks read, and the errors that stop a run before it starts."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path


class ScriptError(Exception):
    """The script cannot be run: missing, unreadable, not Python, or not parsable."""


@dataclass
class StaticContext:
    """The script's source and AST, with small helpers shared by static checks."""

    path: Path
    source: str
    tree: ast.Module
    lines: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.lines = self.source.splitlines()

    @property
    def display_path(self) -> str:
        return str(self.path)

    def calls(self) -> list[ast.Call]:
        """Every call expression, in source order."""
        found = [n for n in ast.walk(self.tree) if isinstance(n, ast.Call)]
        return sorted(found, key=lambda n: (n.lineno, n.col_offset))

    def assignments(self) -> dict[str, list[ast.AST]]:
        """Name (or dotted attribute) → the values assigned to it, in source order."""
        found: dict[str, list[ast.AST]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    name = dotted_name(target)
                    if name:
                        found.setdefault(name, []).append(node.value)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                name = dotted_name(node.target)
                if name:
                    found.setdefault(name, []).append(node.value)
        return found


def dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for Name/Attribute chains, ``self.model`` included; None otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def call_name(call: ast.Call) -> str | None:
    """The dotted name of what is called: ``torch.save``, ``model.state_dict``."""
    return dotted_name(call.func)


_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=]")


#: The largest script convcheck reads.
MAX_SCRIPT_BYTES = 10_000_000


def load_script(path: Path) -> StaticContext:
    """Read and parse the script, or raise ScriptError with a one-paragraph explanation."""
    if not path.exists():
        raise ScriptError(f"{path}: no such file. Give the path of a Python training script.")
    if path.is_dir():
        raise ScriptError(f"{path} is a folder. Give the path of a Python training script (a .py file).")
    # A FIFO would block the read forever and /dev/zero would fill memory: only a regular file
    # of a script's size is read.
    if not path.is_file():
        raise ScriptError(f"{path} is not a regular file (a pipe, socket or device). Give the path of a "
                          "Python training script (a .py file).")
    size = path.stat().st_size
    if size > MAX_SCRIPT_BYTES:
        raise ScriptError(f"{path} is {size / 1e6:.1f} MB: too large for a Python training script "
                          f"(at most {MAX_SCRIPT_BYTES // 1_000_000} MB). Give the path of the script.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScriptError(f"{path}: cannot be read ({exc.strerror}).") from exc
    if b"\x00" in data[:4096]:
        raise ScriptError(f"{path} is not a Python file (it contains binary data). Give a training script.")
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScriptError(f"{path} is not a Python file: it is not valid UTF-8 text ({exc.reason}).") from exc
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}" + (f":{exc.offset}" if exc.offset else "")
        hint = "" if path.suffix == ".py" else " It does not look like a Python file."
        text = (exc.text or "").rstrip()
        snippet = f"\n    {text}" if text else ""
        raise ScriptError(f"{where}: SyntaxError: {exc.msg}.{hint} Nothing was run.{snippet}") from exc
    return StaticContext(path=path, source=source, tree=tree)
