"""Checkpoint surgery: find the state_dicts in a checkpoint, strip wrapper
prefixes, write the result atomically and verify it bit for bit.

The first half of this module is pure and import-light (no torch import): the
prefix helpers work on key lists and are reused by other parts of convcheck.
The second half reads and writes files; it imports torch inside functions so
that importing this module stays cheap.

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

import contextlib
import copy
import errno
import json
import os
import re
import signal
import stat
import struct
import sys
import tempfile
import threading
import warnings
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from pydantic import BaseModel, Field

from convcheck.exitcodes import ExitCode

#: Leading key segments that a wrapper adds: DistributedDataParallel and
#: DataParallel add ``module.``, ``torch.compile`` adds ``_orig_mod.``.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

#: ``Module.get_extra_state`` values live under keys ending in this; they may
#: be any object, not only tensors.
EXTRA_STATE_SUFFIX = "_extra_state"

#: Version of the JSON form of :class:`FixResult`.
RESULT_VERSION = 1

_CHUNK = 8 << 20
_EXAMPLES = 3

PathTuple = tuple[Any, ...]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class CheckpointError(Exception):
    """Bad input: a message for the user (one paragraph) and an exit code."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.CANNOT_RUN, kind: str = "bad-input"):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.kind = kind


class _FastPathUnavailable(Exception):
    """The byte-level rewrite does not apply; use the plain torch.save path."""


# ---------------------------------------------------------------------------
# Pure helpers: state_dict detection and prefix surgery (no torch import)
# ---------------------------------------------------------------------------


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty dict of tensors under string keys, some of them dotted.

    Values under keys ending in ``_extra_state`` may be anything (that is what
    ``Module.get_extra_state`` saves). An optimizer's per-parameter state
    (``{"exp_avg": t, "step": t}``) has no dotted key and is not a state_dict.
    """
    if not isinstance(obj, dict) or not obj:
        return False
    dotted = has_tensor = False
    for key, value in obj.items():
        if not isinstance(key, str):
            return False
        if _is_tensor(value):
            has_tensor = True
        elif not key.endswith(EXTRA_STATE_SUFFIX):
            return False
        if "." in key:
            dotted = True
    return has_tensor and dotted


def find_state_dicts(obj: Any) -> list[tuple[PathTuple, dict]]:
    """Every state_dict inside ``obj``, with the path of keys/indices leading to it.

    The top level is path ``()``; a training checkpoint's model is typically
    ``("model",)`` or ``("state_dict",)``. Only dicts, lists and tuples are
    walked; a state_dict is not searched further.
    """
    found: list[tuple[PathTuple, dict]] = []

    def walk(node: Any, path: PathTuple, active: set[int]) -> None:
        if is_state_dict(node):
            found.append((path, node))
            return
        if isinstance(node, dict):
            children: Iterable[tuple[Any, Any]] = node.items()
        elif isinstance(node, (list, tuple)):
            children = enumerate(node)
        else:
            return
        if id(node) in active:  # a cycle (only possible with --trust)
            return
        active.add(id(node))
        for key, child in children:
            walk(child, path + (key,), active)
        active.discard(id(node))

    walk(obj, (), set())
    return found


def common_wrapper_prefix(keys: Iterable[str], prefixes: Sequence[str] = WRAPPER_PREFIXES) -> str | None:
    """The chain of wrapper prefixes that leads every key, or None.

    ``["module._orig_mod.fc.weight", "module._orig_mod.fc.bias"]`` gives
    ``"module._orig_mod."``. A prefix counts only when every key starts with
    it and keeps a non-empty name after it; text inside a key never counts.
    """
    keys = list(keys)
    if not keys:
        return None
    chain = ""
    while True:
        for prefix in prefixes:
            start = len(chain)
            if all(k.startswith(prefix, start) and len(k) > start + len(prefix) for k in keys):
                chain += prefix
                break
        else:
            return chain or None


def mixed_prefixes(keys: Sequence[str], prefixes: Sequence[str] = WRAPPER_PREFIXES, after: str = "") -> dict[str, int]:
    """Prefixes that lead some but not all keys (after the common chain ``after``): prefix → count."""
    keys = list(keys)
    counts: dict[str, int] = {}
    start = len(after)
    for prefix in prefixes:
        n = sum(1 for k in keys if k.startswith(prefix, start))
        if 0 < n < len(keys):
            counts[prefix] = n
    return counts


def strip_leading(key: str, prefixes: Sequence[str], allow_empty: bool = False) -> str:
    """``key`` without any sequence of leading ``prefixes``."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix) and (allow_empty or len(key) > len(prefix)):
                key = key[len(prefix):]
                changed = True
    return key


def normalize_prefix(text: str) -> str:
    """A prefix as given on the command line, ending with exactly one dot."""
    text = text.strip()
    if not text or text.strip(".") == "":
        raise CheckpointError(f"Prefix {text!r} is empty: give a module path such as 'model.'.")
    return text.rstrip(".") + "."


@dataclass(frozen=True)
class KeyPlan:
    """How the keys of one state_dict are renamed.

    ``strip`` is the common chain removed from every key; with ``force`` any
    leading ``prefixes`` left on a key are removed too (mixed state_dicts);
    ``add`` is put in front of every key afterwards.
    """

    strip: str = ""
    add: str = ""
    force: bool = False
    prefixes: tuple[str, ...] = WRAPPER_PREFIXES

    @property
    def changes_anything(self) -> bool:
        return bool(self.strip or self.add or self.force)

    def rename(self, key: str) -> str:
        rest = key[len(self.strip):]
        if self.force:
            rest = strip_leading(rest, self.prefixes)
        return self.add + rest

    def rename_module_path(self, path: str) -> str | None:
        """The new name of a ``_metadata`` entry (a module path), or None to drop it.

        ``""`` is the outermost module. Stripping ``module.`` turns the
        wrapped model's entry ``"module"`` into ``""`` and drops the wrapper's
        own ``""`` entry, exactly what the unwrapped model would have saved.
        """
        dotted = path + "." if path else ""
        if self.strip:
            if dotted.startswith(self.strip):
                rest = dotted[len(self.strip):]
            elif self.strip.startswith(dotted):
                return None  # a wrapper level
            else:
                rest = dotted
        else:
            rest = dotted
        if self.force:
            rest = strip_leading(rest, self.prefixes, allow_empty=True)
        new = self.add + rest
        return new[:-1] if new.endswith(".") else new


def rename_metadata(metadata: dict, plan: KeyPlan) -> "OrderedDict[str, Any]":
    """``_metadata`` with its module paths renamed like the keys."""
    out: OrderedDict[str, Any] = OrderedDict()
    renamed: dict[str, bool] = {}
    for path, value in metadata.items():
        new = plan.rename_module_path(path) if isinstance(path, str) else path
        if new is None:
            continue
        changed = new != path
        if new in out and renamed[new] and not changed:
            continue  # an entry moved here from the wrapped model wins
        out[new] = value
        renamed[new] = changed
    return out


def rename_state_dict(state_dict: dict, plan: KeyPlan) -> dict:
    """A new state_dict of the same type with renamed keys, same values, renamed ``_metadata``."""
    try:
        new = type(state_dict)()
    except Exception:
        new = OrderedDict()
    for key, value in state_dict.items():
        new[plan.rename(key)] = value
    metadata = getattr(state_dict, "_metadata", None)
    if isinstance(metadata, dict):
        try:
            new._metadata = rename_metadata(metadata, plan)  # type: ignore[attr-defined]
        except AttributeError:  # a plain dict takes no attributes
            pass
    return new


def _replace_at(root: Any, path: PathTuple, fn: Callable[[Any], Any]) -> Any:
    if not path:
        return fn(root)
    head, rest = path[0], path[1:]
    new_child = _replace_at(root[head], rest, fn)
    if isinstance(root, tuple):
        items = list(root)
        items[head] = new_child
        return type(root)(*items) if hasattr(root, "_fields") else type(root)(items)
    new_root = copy.copy(root)
    new_root[head] = new_child
    return new_root


def describe_path(path: PathTuple) -> str:
    """``("model",)`` → ``checkpoint["model"]``; ``()`` → ``checkpoint``."""
    return "checkpoint" + "".join(f"[{p!r}]" if not isinstance(p, str) else f'["{p}"]' for p in path)


# ---------------------------------------------------------------------------
# Results (the JSON form is versioned)
# ---------------------------------------------------------------------------


class StateDictReport(BaseModel):
    """What was found in one state_dict and what changes."""

    path: list[Any]
    location: str
    keys: int
    status: Literal["fix", "clean", "mixed"]
    removed_prefix: str | None = None
    added_prefix: str | None = None
    forced: bool = False
    keys_changed: int = 0
    examples: list[tuple[str, str]] = Field(default_factory=list)
    mixed: dict[str, int] = Field(default_factory=dict)
    mixed_examples: list[str] = Field(default_factory=list)
    metadata_entries: int | None = None
    metadata_entries_after: int | None = None
    interior_orig_mod: int = 0


class KeyDiff(BaseModel):
    """How a set of keys compares with the model's own state_dict."""

    missing: int
    unexpected: int
    shape_mismatch: int = 0
    missing_examples: list[str] = Field(default_factory=list)
    unexpected_examples: list[str] = Field(default_factory=list)
    shape_examples: list[str] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)


class ModelStateDictCheck(BaseModel):
    location: str
    before: KeyDiff
    after: KeyDiff


class ModelCheck(BaseModel):
    """The result of comparing the state_dicts with a model built by ``--model``."""

    factory: str
    model_class: str
    model_keys: int
    state_dicts: list[ModelStateDictCheck] = Field(default_factory=list)
    target: str | None = None
    strict_ok: bool = False
    strict_error: str | None = None


class Verification(BaseModel):
    """What was read back from the written file and compared with the source."""

    ok: bool
    tensors: int = 0
    storages: int = 0
    bytes_compared: int = 0
    problems: list[str] = Field(default_factory=list)


class FixResult(BaseModel):
    """Everything ``convcheck fix-state-dict`` found and did."""

    version: int = RESULT_VERSION
    checkpoint: str
    format: Literal["torch-zip", "torch-legacy", "safetensors"]
    size_bytes: int
    mode: Literal["dry-run", "output", "in-place"]
    status: Literal["would-fix", "nothing-to-fix", "fixed", "unchanged-copy", "verification-failed", "strict-failed"]
    state_dicts: list[StateDictReport] = Field(default_factory=list)
    output: str | None = None
    backup: str | None = None
    verification: Verification | None = None
    model: ModelCheck | None = None
    notes: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.status in ("verification-failed", "strict-failed"):
            return ExitCode.FINDINGS
        return ExitCode.OK


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------


@dataclass
class StateDictPlan:
    path: PathTuple
    keys: list[str]
    plan: KeyPlan
    report: StateDictReport


def plan_state_dict(
    path: PathTuple,
    keys: Sequence[str],
    prefixes: Sequence[str] = WRAPPER_PREFIXES,
    add_prefix: str = "",
    force: bool = False,
    metadata: dict | None = None,
) -> StateDictPlan:
    """Decide how one state_dict's keys change; pure (keys and ``_metadata`` in, plan out)."""
    keys = list(keys)
    prefixes = tuple(prefixes)
    chain = common_wrapper_prefix(keys, prefixes) or ""
    # Only a state_dict without a common chain can be half-wrapped. After a chain, a
    # leading "module." is a real submodule (DDP(model) where model.module exists).
    mixed = mixed_prefixes(keys, prefixes) if not chain else {}
    location = describe_path(path)
    report = StateDictReport(
        path=list(path), location=location, keys=len(keys), status="clean",
        metadata_entries=len(metadata) if metadata is not None else None,
        interior_orig_mod=sum(1 for k in keys if "._orig_mod." in k[len(chain):]),
    )
    if mixed:
        report.mixed = mixed
        report.mixed_examples = [k for k in keys if any(k.startswith(p, len(chain)) for p in mixed)][:_EXAMPLES]
        report.mixed_examples += [k for k in keys if not any(k.startswith(p, len(chain)) for p in mixed)][:_EXAMPLES]
        if not force:
            report.status = "mixed"
            return StateDictPlan(path, keys, KeyPlan(prefixes=prefixes), report)
    plan = KeyPlan(strip=chain, add=add_prefix, force=bool(mixed) and force, prefixes=prefixes)
    new_keys = [plan.rename(k) for k in keys]
    if len(set(new_keys)) != len(new_keys):
        seen: dict[str, str] = {}
        for old, new in zip(keys, new_keys):
            if new in seen:
                raise CheckpointError(
                    f"In {location}, removing the prefixes would give two keys the same name: "
                    f"{seen[new]!r} and {old!r} both become {new!r}. Nothing was changed; "
                    "this state_dict holds keys of two different models and cannot be fixed by renaming."
                )
            seen[new] = old
    changed = [(old, new) for old, new in zip(keys, new_keys) if old != new]
    report.keys_changed = len(changed)
    report.examples = changed[:_EXAMPLES]
    report.removed_prefix = chain or None
    report.added_prefix = add_prefix or None
    report.forced = plan.force
    report.status = "fix" if changed else "clean"
    if not changed:
        plan = KeyPlan(prefixes=prefixes)
    if metadata is not None:
        report.metadata_entries_after = len(rename_metadata(metadata, plan))
    return StateDictPlan(path, keys, plan, report)


def apply_plans(payload: Any, plans: Sequence[StateDictPlan]) -> Any:
    """``payload`` with each planned state_dict renamed; everything else is the same object."""
    for sd_plan in plans:
        if sd_plan.report.status == "fix":
            payload = _replace_at(payload, sd_plan.path, lambda sd, p=sd_plan.plan: rename_state_dict(sd, p))
    return payload


# ---------------------------------------------------------------------------
# Options and the whole command
# ---------------------------------------------------------------------------


@dataclass
class FixOptions:
    checkpoint: Path
    output: Path | None = None
    in_place: bool = False
    prefixes: Sequence[str] = ()
    add_prefix: str | None = None
    model: str | None = None
    strict: bool = False
    force: bool = False
    trust: bool = False


def fix_checkpoint(options: FixOptions) -> FixResult:
    """Run ``fix-state-dict``: plan, optionally check against a model, write and verify.

    Raises :class:`CheckpointError` for bad input; the input file is never
    modified except by ``in_place`` after a backup exists.
    """
    source = Path(options.checkpoint)
    if options.in_place and source.is_symlink():
        source = source.resolve()  # fix the file the link points to; the link stays a link
    prefixes = tuple(dict.fromkeys(WRAPPER_PREFIXES + tuple(normalize_prefix(p) for p in options.prefixes)))
    add_prefix = normalize_prefix(options.add_prefix) if options.add_prefix else ""
    if options.output is not None and options.in_place:
        raise CheckpointError("--output and --in-place exclude each other: pick one.")
    if options.strict and not options.model:
        raise CheckpointError("--strict needs --model module:factory, the model the result must load into.")
    _check_readable(source)
    fmt = detect_format(source)
    size = source.stat().st_size
    mode: Literal["dry-run", "output", "in-place"] = (
        "in-place" if options.in_place else "output" if options.output is not None else "dry-run"
    )
    target = source if options.in_place else options.output
    if target is not None and not options.in_place:
        _check_output_path(source, Path(target))

    reader = _open_source(source, fmt, options.trust)
    plans = [
        plan_state_dict(path, list(sd.keys()), prefixes, add_prefix, options.force,
                        sd._metadata if isinstance(getattr(sd, "_metadata", None), dict) else None)
        for path, sd in reader.state_dicts()
    ]
    if not plans:
        raise CheckpointError(reader.no_state_dict_message())
    mixed = [p.report for p in plans if p.report.status == "mixed"]
    if mixed:
        raise CheckpointError(_mixed_message(source, mixed))

    result = FixResult(checkpoint=str(source), format=fmt, size_bytes=size, mode=mode,
                       status="would-fix", state_dicts=[p.report for p in plans])
    notes: list[str] = []
    for rep in result.state_dicts:
        if rep.interior_orig_mod:
            notes.append(
                f"{rep.location}: {rep.interior_orig_mod} keys contain '_orig_mod.' inside the key "
                "(a submodule was compiled with torch.compile); prefixes are only removed at the start "
                "of a key, so these were left as they are."
            )
    changes = any(p.report.status == "fix" for p in plans)

    with _signals_interrupt():
        result.status = _decide(result, options, reader, plans, changes, mode, target, notes)
    result.notes = [*reader.notes, *notes]
    return result


def _decide(result: FixResult, options: FixOptions, reader: Any, plans: Sequence[StateDictPlan],
            changes: bool, mode: str, target: Path | None, notes: list[str]) -> Any:
    source = Path(result.checkpoint)
    if options.model:
        result.model = _check_model(options.model, reader, plans)
        if options.strict and not result.model.strict_ok:
            if target is not None:
                notes.append("Nothing was written: the result does not load strictly into the model.")
            return "strict-failed"
    if mode == "dry-run":
        return "would-fix" if changes else "nothing-to-fix"
    if mode == "in-place" and not changes:
        notes.append(f"{source} was left untouched.")
        return "nothing-to-fix"

    assert target is not None
    made_backup: Path | None = None
    if mode == "in-place":
        backup = source.with_name(source.name + ".bak")
        made_backup = None if backup.exists() else backup
    result.output = str(target)
    try:
        if mode == "in-place":
            result.backup = str(_make_backup(source))
        result.verification = reader.write(plans, Path(target), keep_mode_of=source if mode == "in-place" else None)
    except BaseException:
        _drop_backup(made_backup)  # the input was not replaced: a backup of it would only mislead
        raise
    if not result.verification.ok:
        result.output = None
        _drop_backup(made_backup)
        result.backup = None if made_backup is not None else result.backup
        notes.append("Nothing was written: the file read back did not match the source, so it was removed.")
        return "verification-failed"
    return "fixed" if changes else "unchanged-copy"


def _drop_backup(backup: Path | None) -> None:
    if backup is not None:
        try:
            backup.unlink()
        except FileNotFoundError:
            pass


def _mixed_message(source: Path, reports: list[StateDictReport]) -> str:
    parts = []
    for rep in reports:
        counts = ", ".join(f"{n} of {rep.keys} keys start with {p!r}" for p, n in rep.mixed.items())
        prefixed = [k for k in rep.mixed_examples if any(k.startswith(p) for p in rep.mixed)]
        unprefixed = [k for k in rep.mixed_examples if k not in prefixed]
        examples = f"prefixed: {', '.join(map(repr, prefixed))}"
        if unprefixed:
            examples += f"; without a prefix: {', '.join(map(repr, unprefixed))}"
        parts.append(f"in {rep.location} {counts} ({examples})")
    return (
        f"{source} has state_dicts with mixed prefixes: " + "; ".join(parts) + ". "
        "A wrapper prefixes every key, so this may be a real submodule named like a wrapper, or keys "
        "of two models merged into one dict. Nothing was changed. If the prefixed keys do come from a "
        "wrapper, re-run with --force to remove the prefix from the keys that have it."
    )


# ---------------------------------------------------------------------------
# Input checks and format detection
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Atomic, verified writing
# ---------------------------------------------------------------------------


class _AtomicFile:
    """A temp file next to ``target``; ``commit`` fsyncs and renames it over ``target``."""

    def __init__(self, target: Path, needed_bytes: int, keep_mode_of: Path | None):
        self.target = target
        self.keep_mode_of = keep_mode_of
        parent = target.parent
        try:
            st = os.statvfs(parent)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = None
        if free is not None and free < needed_bytes:
            raise CheckpointError(
                f"Not enough free space to write {target}: about {_human(needed_bytes)} is needed and "
                f"{_human(free)} is free in {parent}. Nothing was written.", kind="disk-full",
            )
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=parent)
        except OSError as exc:
            raise CheckpointError(f"Cannot write the fixed checkpoint to {target}: {exc.strerror or exc}.") from exc
        os.close(fd)
        self.path = Path(name)

    def _mode(self) -> int:
        ref = self.keep_mode_of if self.keep_mode_of is not None else (self.target if self.target.exists() else None)
        if ref is not None:
            return stat.S_IMODE(os.stat(ref).st_mode)
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask

    def commit(self) -> None:
        os.chmod(self.path, self._mode())
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.path, self.target)
        _fsync_dir(self.target.parent)

    def discard(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def write_verified(self, produce: Callable[[Path], Verification]) -> Verification:
        """Let ``produce`` write and verify the temp file; keep it only when verified.

        Any failure leaves no half-written output behind and the target untouched.
        """
        with _signals_interrupt():
            return self._write_verified(produce)

    def _write_verified(self, produce: Callable[[Path], Verification]) -> Verification:
        try:
            verification = produce(self.path)
            if verification.ok:
                self.commit()
            else:
                self.discard()
            return verification
        except CheckpointError:
            self.discard()
            raise
        except BaseException as exc:
            self.discard()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _write_error(self.target, exc) from exc


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP interrupt like Ctrl-C while a file is written, so the partial file is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            number = getattr(signal, name)
            previous[number] = signal.signal(number, interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(target: Path, exc: BaseException) -> CheckpointError:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"The disk is full: writing {target} failed ({exc.strerror or exc}). The partly written file was "
            "removed and the input is unchanged; free some space and run again.", kind="disk-full",
        )
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    free = ""
    try:
        st = os.statvfs(target.parent)
        free = f" ({_human(st.f_bavail * st.f_frsize)} free in {target.parent})"
    except OSError:
        pass
    return CheckpointError(
        f"Writing {target} failed: {detail}{free}. The partly written file was removed and the input is unchanged."
    )


def _make_backup(source: Path) -> Path:
    """``FILE.bak``: a hard link to the input (instant), or a copy where links are not possible."""
    backup = source.with_name(source.name + ".bak")
    if backup.exists():
        if os.path.samefile(backup, source) or _same_bytes(backup, source):
            return backup
        raise CheckpointError(
            f"--in-place needs a backup at {backup}, but that file already exists and differs from {source}. "
            "Move it away (or use --output) and run again; nothing was changed."
        )
    try:
        os.link(source, backup)
    except OSError:
        tmp = _AtomicFile(backup, source.stat().st_size, keep_mode_of=source)
        try:
            _copy_whole(source, tmp.path)
            tmp.commit()
        except CheckpointError:
            tmp.discard()
            raise
        except BaseException as exc:
            tmp.discard()
            raise _write_error(backup, exc) from exc
    _fsync_dir(backup.parent)
    return backup


def _copy_whole(source: Path, dest: Path) -> None:
    size = source.stat().st_size
    src_fd = os.open(source, os.O_RDONLY)
    dst_fd = os.open(dest, os.O_WRONLY | os.O_TRUNC)
    try:
        _copy_range(src_fd, dst_fd, 0, 0, size)
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int) -> None:
    """Copy ``count`` bytes between files at the given offsets, in the kernel where possible."""
    use_kernel = hasattr(os, "copy_file_range")
    while count > 0:
        if use_kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), src_off, dst_off)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    use_kernel = False
                    continue
                raise
        else:
            data = os.pread(src_fd, min(count, _CHUNK), src_off)
            n = len(data) and _pwrite_all(dst_fd, data, dst_off)
        if n == 0:
            raise OSError(errno.EIO, f"unexpected end of the source file at byte {src_off}")
        src_off += n
        dst_off += n
        count -= n


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
    return len(data)


def _compare_ranges(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int) -> tuple[bool, int]:
    """Whether two byte ranges are equal, and the CRC-32 of the source range."""
    crc = 0
    a, b = _buffers()
    while count > 0:
        n = min(count, _CHUNK)
        got_a = os.preadv(src_fd, [memoryview(a)[:n]], src_off)
        got_b = os.preadv(dst_fd, [memoryview(b)[:n]], dst_off)
        if got_a != n or got_b != n:
            return False, crc
        if not (a == b if n == _CHUNK else a[:n] == b[:n]):
            return False, crc
        crc = zlib.crc32(memoryview(a)[:n], crc)
        src_off += n
        dst_off += n
        count -= n
    return True, crc


_BUFFERS: tuple[bytearray, bytearray] | None = None


def _buffers() -> tuple[bytearray, bytearray]:
    """Two reusable read buffers: no allocation (and no page faults) per chunk."""
    global _BUFFERS
    if _BUFFERS is None:
        _BUFFERS = (bytearray(_CHUNK), bytearray(_CHUNK))
    return _BUFFERS


class _BackgroundFsync:
    """fsync a file in a thread while the caller verifies it (fsync releases the GIL)."""

    def __init__(self, path: Path):
        self.error: BaseException | None = None
        self._fd = os.open(path, os.O_RDONLY)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            os.fsync(self._fd)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self) -> None:
        self._thread.join()
        os.close(self._fd)
        if self.error is not None:
            raise self.error


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# ---------------------------------------------------------------------------
# Structural comparison of two payloads
# ---------------------------------------------------------------------------


def _leaf_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and a != a:
        return b != b
    if all(hasattr(a, name) for name in ("tobytes", "shape", "dtype")):  # numpy arrays and scalars
        try:
            return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        except Exception:
            pass
    try:
        same = a == b
    except Exception:
        return repr(a) == repr(b)
    if isinstance(same, bool):
        return same
    try:
        return bool(same)
    except Exception:
        return repr(a) == repr(b)


def _compare_payloads(expected: Any, actual: Any, on_tensor: Callable[[Any, Any, str], None], problems: list[str]) -> None:
    """Walk both payloads in step; report every difference that is not a tensor's data into ``problems``."""

    def walk(e: Any, a: Any, where: str, depth: int) -> None:
        if len(problems) > 20:
            return
        if depth > 200:
            problems.append(f"{where}: nested too deeply to compare")
            return
        if _is_tensor(e) or _is_tensor(a):
            if not (_is_tensor(e) and _is_tensor(a)):
                problems.append(f"{where}: expected {type(e).__name__}, read back {type(a).__name__}")
                return
            on_tensor(e, a, where)
            return
        if type(e) is not type(a):
            problems.append(f"{where}: expected {type(e).__name__}, read back {type(a).__name__}")
            return
        if isinstance(e, dict):
            ek, ak = list(e.keys()), list(a.keys())
            if ek != ak:
                diff = next((f"{x!r} vs {y!r}" for x, y in zip(ek, ak) if x != y), f"{len(ek)} vs {len(ak)} keys")
                problems.append(f"{where}: keys differ ({diff})")
                return
            em, am = getattr(e, "_metadata", None), getattr(a, "_metadata", None)
            if em is not None or am is not None:
                if em is None or am is None or dict(em) != dict(am):
                    problems.append(f"{where}: _metadata differs")
            for key in ek:
                walk(e[key], a[key], f"{where}[{key!r}]", depth + 1)
            return
        if isinstance(e, (list, tuple)):
            if len(e) != len(a):
                problems.append(f"{where}: length {len(e)} vs {len(a)}")
                return
            for i, (x, y) in enumerate(zip(e, a)):
                walk(x, y, f"{where}[{i}]", depth + 1)
            return
        state_e, state_a = getattr(e, "__dict__", None), getattr(a, "__dict__", None)
        if isinstance(state_e, dict) and isinstance(state_a, dict) and not isinstance(e, type) and not callable(e):
            walk(dict(state_e), dict(state_a), where, depth + 1)
            return
        if not _leaf_equal(e, a):
            problems.append(f"{where}: {type(e).__name__} value differs")

    walk(expected, actual, "checkpoint", 0)


def _tensor_meta_problem(e: Any, a: Any) -> str | None:
    if type(e) is not type(a):
        return f"type {type(e).__name__} vs {type(a).__name__}"
    if e.dtype != a.dtype or tuple(e.shape) != tuple(a.shape):
        return f"{e.dtype}{tuple(e.shape)} vs {a.dtype}{tuple(a.shape)}"
    if e.layout != a.layout:
        return f"layout {e.layout} vs {a.layout}"
    if e.stride() != a.stride() or e.storage_offset() != a.storage_offset():
        return "strides or storage offset differ"
    if e.requires_grad != a.requires_grad:
        return "requires_grad differs"
    return None


# ---------------------------------------------------------------------------
# Zip archive index (torch's zip format, as written by torch.save)
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Readers: one per format, with the same small interface
# ---------------------------------------------------------------------------


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _printable(text: str, limit: int = 160) -> str:
    """``text`` on one line, without control or garbage characters, at most ``limit`` long."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__).strip()


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


def _open_source(path: Path, fmt: str, trust: bool) -> Any:
    if fmt == "safetensors":
        return _SafetensorsReader(path)
    return _TorchReader(path, fmt, trust)


# ---------------------------------------------------------------------------
# --model: compare with the keys the model expects
# ---------------------------------------------------------------------------


def load_model(spec: str) -> Any:
    """Build the model named by ``module:factory`` (or ``path/to/file.py:factory``)."""
    import importlib
    import importlib.util

    import torch

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CheckpointError(f"--model {spec!r} must look like 'package.module:factory' or 'file.py:factory'.")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            file = Path(module_name)
            if not file.is_file():
                raise CheckpointError(f"--model {spec}: {file} does not exist.")
            mod_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
            sys.path.insert(0, str(file.resolve().parent))
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        model = obj if isinstance(obj, torch.nn.Module) else obj()
    except CheckpointError:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise CheckpointError(f"--model {spec}: building the model failed: {type(exc).__name__}: {_first_line(exc)}.") from exc
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"--model {spec} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _key_diff(keys: Sequence[str], tensors: dict, model_sd: dict) -> KeyDiff:
    have = set(keys)
    want = set(model_sd)
    missing = [k for k in model_sd if k not in have]
    unexpected = [k for k in keys if k not in want]
    shapes = [
        f"{k}: {tuple(tensors[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in keys
        if k in want and _is_tensor(tensors.get(k)) and tuple(tensors[k].shape) != tuple(model_sd[k].shape)
    ]
    return KeyDiff(missing=len(missing), unexpected=len(unexpected), shape_mismatch=len(shapes),
                   missing_examples=missing[:_EXAMPLES], unexpected_examples=unexpected[:_EXAMPLES],
                   shape_examples=shapes[:_EXAMPLES])


def _check_model(spec: str, reader: Any, plans: Sequence[StateDictPlan]) -> ModelCheck:
    model = load_model(spec)
    model_sd = model.state_dict()
    check = ModelCheck(factory=spec, model_class=type(model).__qualname__, model_keys=len(model_sd))
    pairs = reader.real_state_dicts(plans)
    best: tuple[int, int] | None = None
    for i, (plan, (before_sd, after_sd)) in enumerate(zip(plans, pairs)):
        before = _key_diff(list(before_sd), before_sd, model_sd)
        after = _key_diff(list(after_sd), after_sd, model_sd)
        check.state_dicts.append(ModelStateDictCheck(location=plan.report.location, before=before, after=after))
        matched = len(set(after_sd) & set(model_sd))
        if best is None or matched > best[0]:
            best = (matched, i)
    assert best is not None
    target_sd = pairs[best[1]][1]
    check.target = plans[best[1]].report.location
    try:
        model.load_state_dict(target_sd, strict=True)
        check.strict_ok = True
    except Exception as exc:
        text = _ANSI.sub("", str(exc)).strip()
        check.strict_error = " ".join(text.split())[:600]
    return check
