"""Reading and rewriting torch.save checkpoints (zip and legacy formats).

How a torch zip checkpoint is rewritten without holding it in memory:
renaming keys changes only the pickle (``data.pkl``) of the archive, never a
storage record. The new pickle and the archive layout are written with
``torch.serialization.skip_data`` (storage space reserved, not filled), then
every storage record is copied from the source file at the byte level, and
finally every copied byte is read back and compared with the source, the
archive's CRC-32 fields are filled in, and the file is renamed into place.
Tensor pages are never mapped into the process, so peak memory stays near the
size of the pickle however large the checkpoint is.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from convcheck.statedict.atomic_write import _AtomicFile
from convcheck.statedict.byte_copy import _BackgroundFsync, _compare_ranges, _copy_range, _pwrite_all
from convcheck.statedict.errors import _ANSI, CheckpointError, _first_line, _printable
from convcheck.statedict.key_plans import PathTuple, StateDictPlan, apply_plans, find_state_dicts, rename_state_dict
from convcheck.statedict.payload_compare import _compare_payloads, _tensor_meta_problem
from convcheck.statedict.results import Verification


class _FastPathUnavailable(Exception):
    """The byte-level rewrite does not apply; use the plain torch.save path."""


@dataclass
class _ZipRecord:
    name: str
    header_offset: int
    data_offset: int
    size: int
    crc: int
    flags: int
    stored: bool
    central_offset: int = -1


class _ZipIndex:
    """Where each record of a zip file lives, to copy storage bytes and patch CRC-32s."""

    def __init__(self, path: Path):
        self.records: dict[str, _ZipRecord] = {}
        with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
            infos = zf.infolist()
            start_dir = getattr(zf, "start_dir", None)
            for info in infos:
                f.seek(info.header_offset)
                header = f.read(30)
                if len(header) != 30 or header[:4] != b"PK\x03\x04":
                    raise ValueError(f"bad local header for {info.filename}")
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                self.records[info.filename] = _ZipRecord(
                    name=info.filename, header_offset=info.header_offset,
                    data_offset=info.header_offset + 30 + name_len + extra_len,
                    size=info.file_size, crc=info.CRC, flags=info.flag_bits,
                    stored=info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size,
                )
            if start_dir is not None:
                f.seek(start_dir)
                for _ in infos:
                    entry = f.tell()
                    fixed = f.read(46)
                    if len(fixed) != 46 or fixed[:4] != b"PK\x01\x02":
                        break
                    name_len, extra_len, comment_len = struct.unpack("<HHH", fixed[28:34])
                    raw = f.read(name_len)
                    flags = struct.unpack("<H", fixed[8:10])[0]
                    name = raw.decode("utf-8" if flags & 0x800 else "cp437")
                    f.seek(extra_len + comment_len, os.SEEK_CUR)
                    if name in self.records:
                        self.records[name].central_offset = entry
        self.by_data_offset = {r.data_offset: r for r in self.records.values()}

    def storage_records(self) -> list[_ZipRecord]:
        return [r for r in self.records.values() if re.search(r"(^|/)data/[^/]+$", r.name)]

    def find(self, suffix: str) -> _ZipRecord | None:
        """The record named ``suffix`` inside the archive's folder."""
        for rec in self.records.values():
            if rec.name == suffix or rec.name.endswith("/" + suffix):
                return rec
        return None


def _patch_crc(fd: int, rec: _ZipRecord, crc: int) -> None:
    """Write ``crc`` into the record's data descriptor (or local header) and central directory entry."""
    packed = struct.pack("<I", crc)
    if rec.flags & 0x08:
        pos = rec.data_offset + rec.size
        sig = os.pread(fd, 4, pos)
        _pwrite_all(fd, packed, pos + 4 if sig == b"PK\x07\x08" else pos)
    else:
        _pwrite_all(fd, packed, rec.header_offset + 14)
    if rec.central_offset < 0:
        raise OSError(errno.EIO, f"no central directory entry for {rec.name}")
    _pwrite_all(fd, packed, rec.central_offset + 16)


class _TorchReader:
    """A torch.save checkpoint (zip or legacy format)."""

    def __init__(self, path: Path, fmt: str, trust: bool):
        self.path = path
        self.fmt = fmt
        self.trust = trust
        self.notes: list[str] = []
        self.fast = False
        self._cpu_payload: Any = None
        self.zip_index: _ZipIndex | None = None
        if fmt == "torch-zip":
            try:
                self.zip_index = _ZipIndex(path)
            except (zipfile.BadZipFile, ValueError, OSError, struct.error) as exc:
                raise CheckpointError(
                    f"{path} is truncated or corrupted: it starts like a zip archive (torch.save's format) "
                    f"but its directory cannot be read ({_first_line(exc)}). Re-save or re-download it."
                ) from exc
            if not any(r.name.endswith("data.pkl") for r in self.zip_index.records.values()):
                raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint: it has no data.pkl record.")
            try:
                self.plan_payload = self._load(map_location="meta")
                self.fast = self._fast_path_possible()
            except CheckpointError:
                raise
            except Exception:
                # Files written by other tools may not allow a metadata-only load.
                self.plan_payload = self.cpu_payload()
        else:
            self.plan_payload = self.cpu_payload()
            self.notes.append(
                "The input uses torch's legacy (non-zip) format, which cannot be memory-mapped; "
                "it was read into memory, and any file written is in the current zip format."
            )

    # -- loading ------------------------------------------------------------------

    def _load(self, map_location: str, mmap: bool = False) -> Any:
        import pickle

        import torch

        try:
            with warnings.catch_warnings():
                # e.g. "Detected pickle protocol 4": noise next to the error this reports instead
                warnings.simplefilter("ignore")
                return torch.load(self.path, map_location=map_location, weights_only=not self.trust, mmap=mmap)
        except pickle.UnpicklingError as exc:
            raise self._unpickling_error(exc) from exc
        except RuntimeError as exc:
            text = _first_line(exc)
            if "central directory" in text or "PytorchStreamReader" in text or "zip archive" in text:
                raise CheckpointError(
                    f"{self.path} is truncated or corrupted: torch cannot read its zip archive ({text}). "
                    "Re-save or re-download it."
                ) from exc
            raise CheckpointError(f"{self.path} could not be read as a PyTorch checkpoint: {text}.") from exc
        except (EOFError, KeyError, ValueError, AttributeError, ImportError, TypeError, IndexError, OSError) as exc:
            hint = "It is truncated or corrupted, or not a torch.save file."
            raise CheckpointError(
                f"{self.path} could not be read as a PyTorch checkpoint: {type(exc).__name__}: {_first_line(exc)}. {hint}"
            ) from exc

    def _unpickling_error(self, exc: BaseException) -> CheckpointError:
        text = _ANSI.sub("", str(exc))
        if "Weights only load failed" not in text:
            return CheckpointError(
                f"{self.path} is corrupted or not a PyTorch checkpoint: unpickling failed ({_first_line(exc)})."
            )
        names = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", text)
        if self.fmt == "torch-zip":
            try:
                import torch

                names = sorted(set(names) | set(torch.serialization.get_unsafe_globals_in_checkpoint(self.path)))
            except Exception:
                pass
        if names:
            listed = ", ".join(names)
            return CheckpointError(
                f"{self.path} holds objects that a safe load refuses: {listed}. convcheck loads checkpoints with "
                "torch.load(weights_only=True), which reads tensors and plain containers but never runs code from "
                "the file. Only if you trust where this file comes from, re-run with --trust: it unpickles the file "
                "with weights_only=False, which runs whatever code the file contains. Nothing was changed.",
                kind="unsafe",
            )
        found = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", text, re.S)
        reason = _printable(found.group(1) if found else "") or _printable(_first_line(exc))
        return CheckpointError(
            f"{self.path} is corrupted or not a PyTorch checkpoint: its pickle cannot be read ({reason})."
        )

    def cpu_payload(self) -> Any:
        """The payload with real CPU tensors, memory-mapped where the format allows."""
        if self._cpu_payload is None:
            self._cpu_payload = self._load(map_location="cpu", mmap=self.fmt == "torch-zip")
        return self._cpu_payload

    def _fast_path_possible(self) -> bool:
        import torch

        idx = self.zip_index
        if idx is None or not hasattr(torch.serialization, "skip_data") or sys.byteorder != "little":
            return False
        byteorder = idx.find("byteorder")
        if byteorder is not None:
            with open(self.path, "rb") as f:
                f.seek(byteorder.data_offset)
                if f.read(byteorder.size) != b"little":
                    return False
        return all(r.stored for r in idx.storage_records())

    # -- the interface used by fix_checkpoint --------------------------------

    def state_dicts(self) -> list[tuple[PathTuple, dict]]:
        return find_state_dicts(self.plan_payload)

    def no_state_dict_message(self) -> str:
        payload = self.plan_payload
        if isinstance(payload, dict):
            shown = ", ".join(repr(k) for k in list(payload)[:8])
            what = f"a dict with keys {shown}"
        else:
            what = f"a {type(payload).__module__}.{type(payload).__qualname__}"
        hint = ""
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(payload, torch.nn.Module):
            hint = " It is a whole pickled model: load it and save model.state_dict() instead."
        return (
            f"No state_dict found in {self.path}: it holds {what}, and no part of it is a dict of tensors "
            f"under dotted keys (like 'fc.weight').{hint}"
        )

    def real_state_dicts(self, plans: Sequence[StateDictPlan]) -> list[tuple[dict, dict]]:
        """(original, renamed) state_dicts with real tensors, for --model."""
        payload = self.cpu_payload()
        found = dict(find_state_dicts(payload))
        out = []
        for plan in plans:
            sd = found[plan.path]
            out.append((sd, rename_state_dict(sd, plan.plan) if plan.report.status == "fix" else sd))
        return out

    def write(self, plans: Sequence[StateDictPlan], target: Path, keep_mode_of: Path | None) -> Verification:
        def produce(tmp: Path) -> Verification:
            if self.fast:
                try:
                    return self._write_fast(plans, tmp)
                except _FastPathUnavailable as why:
                    self.notes.append(f"Wrote with torch.save instead of the byte-level copy ({why}).")
            return self._write_plain(plans, tmp)

        return _AtomicFile(target, self.path.stat().st_size + (1 << 20), keep_mode_of).write_verified(produce)

    # -- writing: plain torch.save -----------------------------------------------

    def _write_plain(self, plans: Sequence[StateDictPlan], tmp: Path) -> Verification:
        import torch

        source = self.cpu_payload()
        torch.save(apply_plans(source, plans), tmp)
        expected = apply_plans(source, plans)
        written = torch.load(tmp, map_location="cpu", weights_only=not self.trust, mmap=True)
        problems: list[str] = []
        seen: dict[tuple[int, int], bool] = {}
        counts = {"tensors": 0, "bytes": 0}

        def on_tensor(e: Any, a: Any, where: str) -> None:
            counts["tensors"] += 1
            meta = _tensor_meta_problem(e, a)
            if meta:
                problems.append(f"{where}: {meta}")
                return
            se, sa = e.untyped_storage(), a.untyped_storage()
            key = (se.data_ptr(), sa.data_ptr())
            if key in seen or se.nbytes() == 0:
                return
            if se.nbytes() != sa.nbytes():
                problems.append(f"{where}: storage of {se.nbytes()} vs {sa.nbytes()} bytes")
                return
            ue = torch.empty(0, dtype=torch.uint8).set_(se, 0, (se.nbytes(),), (1,))
            ua = torch.empty(0, dtype=torch.uint8).set_(sa, 0, (sa.nbytes(),), (1,))
            seen[key] = True
            counts["bytes"] += se.nbytes()
            if not torch.equal(ue, ua):
                problems.append(f"{where}: tensor data differs")

        _compare_payloads(expected, written, on_tensor, problems)
        return Verification(ok=not problems, tensors=counts["tensors"], storages=len(seen),
                            bytes_compared=counts["bytes"], problems=problems)

    # -- writing: byte-level copy of the storage records -------------------------

    def _write_fast(self, plans: Sequence[StateDictPlan], tmp: Path) -> Verification:
        import torch

        src_index = self.zip_index
        assert src_index is not None
        with torch.serialization.skip_data():
            torch.save(apply_plans(self.cpu_payload(), plans), tmp)
        out_index = _ZipIndex(tmp)
        written_meta = torch.load(tmp, map_location="meta", weights_only=not self.trust)
        expected = apply_plans(self.plan_payload, plans)

        problems: list[str] = []
        pairs: dict[int, tuple[int, int]] = {}  # output data offset -> (source data offset, nbytes)
        reverse: dict[int, int] = {}
        counts = {"tensors": 0}

        def on_tensor(e: Any, a: Any, where: str) -> None:
            counts["tensors"] += 1
            meta = _tensor_meta_problem(e, a)
            if meta:
                problems.append(f"{where}: {meta}")
                return
            se, sa = e.untyped_storage(), a.untyped_storage()
            if se.nbytes() != sa.nbytes():
                problems.append(f"{where}: storage of {se.nbytes()} vs {sa.nbytes()} bytes")
                return
            if se.nbytes() == 0:
                return
            so, ao = getattr(se, "_checkpoint_offset", None), getattr(sa, "_checkpoint_offset", None)
            if so is None or ao is None:
                raise _FastPathUnavailable("storage offsets are not available")
            if pairs.setdefault(ao, (so, se.nbytes())) != (so, se.nbytes()) or reverse.setdefault(so, ao) != ao:
                problems.append(f"{where}: storage sharing differs from the source")

        try:
            _compare_payloads(expected, written_meta, on_tensor, problems)
        except _FastPathUnavailable:
            raise
        except Exception as exc:  # sparse/quantized/subclass tensors have no plain storage
            raise _FastPathUnavailable(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        if problems:
            return Verification(ok=False, tensors=counts["tensors"], problems=problems)

        # Every storage offset must be the start of a stored record of exactly that size.
        out_records = {r.data_offset: r for r in out_index.storage_records()}
        jobs: list[tuple[_ZipRecord, _ZipRecord]] = []
        for out_off, (src_off, nbytes) in pairs.items():
            src_rec, out_rec = src_index.by_data_offset.get(src_off), out_records.get(out_off)
            if src_rec is None or src_rec.size != nbytes or not src_rec.stored:
                raise _FastPathUnavailable("the source's storage records are not laid out as torch.save writes them")
            if out_rec is None or out_rec.size != nbytes:
                raise _FastPathUnavailable("the new archive's records are not where expected")
            jobs.append((src_rec, out_rec))
        covered = {out.data_offset for _, out in jobs}
        for rec in out_index.storage_records():
            if rec.size and rec.data_offset not in covered:
                raise _FastPathUnavailable(f"record {rec.name} holds a storage that no tensor in the payload reaches")

        src_fd = os.open(self.path, os.O_RDONLY)
        dst_fd = os.open(tmp, os.O_RDWR)
        try:
            for src_rec, out_rec in jobs:
                _copy_range(src_fd, dst_fd, src_rec.data_offset, out_rec.data_offset, src_rec.size)
            syncing = _BackgroundFsync(tmp)
            compared = 0
            crcs: list[tuple[_ZipRecord, int]] = []
            try:
                for src_rec, out_rec in jobs:
                    same, crc = _compare_ranges(src_fd, dst_fd, src_rec.data_offset, out_rec.data_offset, src_rec.size)
                    if not same:
                        problems.append(f"{out_rec.name}: bytes read back differ from the source record {src_rec.name}")
                        continue
                    if src_rec.crc and crc != src_rec.crc:
                        raise CheckpointError(
                            f"{self.path} is corrupted: the data of {src_rec.name} does not match the CRC-32 stored "
                            f"in the archive (stored {src_rec.crc:08x}, computed {crc:08x}). Some tensor bytes were "
                            "changed after saving (bad disk, incomplete copy). Nothing was written; re-save or "
                            "re-download the checkpoint."
                        )
                    compared += src_rec.size
                    crcs.append((out_rec, crc))
            finally:
                syncing.join()
            for out_rec, crc in crcs:
                _patch_crc(dst_fd, out_rec, crc)
        finally:
            os.close(src_fd)
            os.close(dst_fd)

        # Read the finished file back as a user would: memory-mapped, weights only.
        readback = torch.load(tmp, map_location="cpu", weights_only=not self.trust, mmap=True)
        if len(find_state_dicts(readback)) != len(find_state_dicts(expected)):
            problems.append("the written file does not hold the same state_dicts")
        return Verification(ok=not problems, tensors=counts["tensors"], storages=len(jobs),
                            bytes_compared=compared, problems=problems)
