"""The ``fix-state-dict`` command as a function: options in, plan, check, write and verify, result out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from convcheck.statedict.atomic_write import _drop_backup, _make_backup, _signals_interrupt
from convcheck.statedict.errors import CheckpointError
from convcheck.statedict.input_checks import _check_output_path, _check_readable, detect_format
from convcheck.statedict.key_plans import WRAPPER_PREFIXES, StateDictPlan, normalize_prefix, plan_state_dict
from convcheck.statedict.model_check import _check_model
from convcheck.statedict.results import FixResult, StateDictReport
from convcheck.statedict.safetensors_checkpoint import _SafetensorsReader
from convcheck.statedict.torch_checkpoint import _TorchReader


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


def _open_source(path: Path, fmt: str, trust: bool) -> Any:
    if fmt == "safetensors":
        return _SafetensorsReader(path)
    return _TorchReader(path, fmt, trust)
