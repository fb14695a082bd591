"""Validating, reading and rewriting safetensors files: renaming rewrites only the header."""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from convcheck.statedict.atomic_write import _AtomicFile
from convcheck.statedict.byte_copy import _BackgroundFsync, _compare_ranges, _copy_range, _pwrite_all
from convcheck.statedict.errors import CheckpointError, _first_line
from convcheck.statedict.key_plans import PathTuple, StateDictPlan, rename_state_dict
from convcheck.statedict.results import Verification


_SAFETENSORS_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "U16": ("uint16", 2), "U32": ("uint32", 4), "U64": ("uint64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "C64": ("complex64", 8),
}
#: Every dtype the safetensors format names (sizes above only for those torch can hold).
_SAFETENSORS_ALL_DTYPES = frozenset(_SAFETENSORS_DTYPES) | {
    "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "C32", "U1", "I4", "U4",
}
_SAFETENSORS_MAX_HEADER = 100 << 20


@dataclass
class _SafetensorsHeader:
    entries: "OrderedDict[str, dict]"
    metadata: dict | None
    data_start: int
    data_size: int


def read_safetensors_header(path: Path) -> _SafetensorsHeader:
    """Parse and check a safetensors header (the tensors themselves are not read)."""
    size = path.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid safetensors file: {why} (truncated or corrupted?).")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("it is shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > _SAFETENSORS_MAX_HEADER or 8 + n > size:
            raise bad(f"its header claims {n} bytes but the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=OrderedDict)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"its JSON header cannot be parsed ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    # The same rules the safetensors library applies when it loads a file: a header it would
    # refuse is refused here, before anything is written from it.
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise bad("its __metadata__ is not an object of strings")
    data_size = size - 8 - n
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise bad(f"the entry for {name!r} lacks dtype, shape or data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _SAFETENSORS_ALL_DTYPES:
            raise bad(f"{name!r} has dtype {dtype!r}, which is not a safetensors dtype")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise bad(f"{name!r} has shape {shape!r}, not a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise bad(f"{name!r} has data_offsets {offsets!r}, not two non-negative integers")
        begin, end = offsets
        if not (begin <= end <= data_size):
            raise bad(f"the data of {name!r} lies outside the file")
        known = _SAFETENSORS_DTYPES.get(dtype)
        if known is not None:
            numel = 1
            for dim in shape:
                numel *= dim
            if numel * known[1] != end - begin:
                raise bad(f"{name!r} has {end - begin} bytes for shape {shape} of {dtype}")
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise bad(f"the data of {name!r} does not follow the tensor before it (safetensors needs no gaps)")
        position = end
    if position != data_size:
        raise bad(f"its tensors cover {position} of the {data_size} data bytes")
    return _SafetensorsHeader(entries=header, metadata=metadata, data_start=8 + n, data_size=data_size)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safetensors_refusal(path: Path) -> str | None:
    """Why the safetensors library refuses to open ``path`` (None: it opens it, or is not installed)."""
    try:
        from safetensors import safe_open
    except ImportError:
        return None
    try:
        with safe_open(str(path), framework="np") as handle:
            list(handle.keys())
            handle.metadata()
    except Exception as exc:  # safetensors raises its own error types
        return f"the safetensors library refuses to load it ({_first_line(exc)})"
    return None


class _SafetensorsReader:
    """A safetensors file: one flat state_dict; renaming rewrites only the header."""

    def __init__(self, path: Path):
        self.path = path
        self.header = read_safetensors_header(path)
        self.notes: list[str] = []

    def state_dicts(self) -> list[tuple[PathTuple, dict]]:
        return [((), dict(self.header.entries))] if self.header.entries else []

    def no_state_dict_message(self) -> str:
        return f"No tensors found in {self.path}: its safetensors header lists none."

    def _tensors(self) -> dict:
        import torch

        size = self.path.stat().st_size
        storage = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size)
        out = {}
        for name, entry in self.header.entries.items():
            known = _SAFETENSORS_DTYPES.get(entry["dtype"])
            if known is None or not hasattr(torch, known[0]):
                raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {entry['dtype']}, which this torch cannot load.")
            begin, end = entry["data_offsets"]
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, self.header.data_start + begin, (end - begin,), (1,))
            dtype = getattr(torch, known[0])
            try:
                tensor = raw.view(dtype)
            except RuntimeError:  # unaligned data
                tensor = raw.clone().view(dtype)
            out[name] = tensor.reshape(entry["shape"])
        return out

    def real_state_dicts(self, plans: Sequence[StateDictPlan]) -> list[tuple[dict, dict]]:
        sd = self._tensors()
        plan = plans[0]
        return [(sd, rename_state_dict(sd, plan.plan) if plan.report.status == "fix" else sd)]

    def write(self, plans: Sequence[StateDictPlan], target: Path, keep_mode_of: Path | None) -> Verification:
        plan = plans[0]
        rename = plan.plan.rename if plan.report.status == "fix" else (lambda k: k)
        new_header: OrderedDict[str, Any] = OrderedDict()
        if self.header.metadata is not None:
            new_header["__metadata__"] = self.header.metadata
        for name, entry in self.header.entries.items():
            new_header[rename(name)] = entry
        encoded = json.dumps(new_header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)

        def produce(tmp: Path) -> Verification:
            src_fd = os.open(self.path, os.O_RDONLY)
            dst_fd = os.open(tmp, os.O_RDWR | os.O_TRUNC)
            try:
                _pwrite_all(dst_fd, struct.pack("<Q", len(encoded)) + encoded, 0)
                start = 8 + len(encoded)
                _copy_range(src_fd, dst_fd, self.header.data_start, start, self.header.data_size)
                syncing = _BackgroundFsync(tmp)
                try:
                    same, _ = _compare_ranges(src_fd, dst_fd, self.header.data_start, start, self.header.data_size)
                finally:
                    syncing.join()
            finally:
                os.close(src_fd)
                os.close(dst_fd)
            problems = [] if same else ["the tensor data read back differs from the source"]
            written = read_safetensors_header(tmp)
            expected = OrderedDict((rename(k), v) for k, v in self.header.entries.items())
            if list(written.entries.items()) != list(expected.items()):
                problems.append("the header read back does not list the renamed tensors")
            if written.metadata != self.header.metadata:
                problems.append("the __metadata__ read back differs")
            refusal = _safetensors_refusal(tmp)
            if refusal:
                problems.append(refusal)
            return Verification(ok=not problems, tensors=len(written.entries), storages=len(written.entries),
                                bytes_compared=self.header.data_size if same else 0, problems=problems)

        reserve = 8 + len(encoded) + self.header.data_size + (1 << 20)
        return _AtomicFile(target, reserve, keep_mode_of).write_verified(produce)
