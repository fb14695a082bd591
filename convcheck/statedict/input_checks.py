"""Checks on the input and output paths, and detection of the checkpoint's format."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Literal

from convcheck.statedict.errors import CheckpointError


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give the path of a checkpoint file (.pt, .pth, .bin, .ckpt or .safetensors).")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file. Sharded checkpoints are not supported; give one file.")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}.") from exc


def detect_format(path: Path) -> Literal["torch-zip", "torch-legacy", "safetensors"]:
    """What kind of file ``path`` is, from its first bytes (the extension is only a hint)."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it is not a checkpoint; was the save interrupted?")
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 8 + header_len <= size:
            return "safetensors"
    if path.suffix == ".safetensors":
        raise CheckpointError(
            f"{path} is not a valid safetensors file: it does not start with an 8-byte header length "
            "followed by a JSON header (truncated or corrupted?)."
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    raise CheckpointError(
        f"{path} is not a checkpoint: it is neither a torch.save file (zip or legacy pickle format) "
        f"nor a safetensors file (it starts with {head[:8]!r})."
    )


def _check_output_path(source: Path, output: Path) -> None:
    if output.exists() and output.is_dir():
        raise CheckpointError(f"Cannot write the fixed checkpoint to {output}: it is a folder. Give a file name.")
    try:
        if output.exists() and os.path.samefile(source, output):
            raise CheckpointError(f"--output {output} is the input itself; use --in-place to replace the input (a backup is made first).")
    except OSError:
        pass
    parent = output.parent
    if not parent.exists():
        raise CheckpointError(f"Cannot write the fixed checkpoint to {output}: the folder {parent} does not exist.")
    if not parent.is_dir():
        raise CheckpointError(f"Cannot write the fixed checkpoint to {output}: {parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"Cannot write the fixed checkpoint to {output}: the folder {parent} is not writable.")
