"""``convcheck fix-state-dict``: the command's options and its output (the work is in the statedict package).

Nothing here imports torch at module level; statedict is imported when the
command runs.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from convcheck.exitcodes import ExitCode

if TYPE_CHECKING:
    from convcheck.statedict import FixResult


class FixFormat(str, Enum):
    text = "text"
    json = "json"


def fix_state_dict(
    checkpoint: Annotated[
        Path,
        typer.Argument(metavar="CHECKPOINT", help="The checkpoint: .pt/.pth/.bin/.ckpt (torch.save, zip or legacy format) or .safetensors."),
    ],
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", metavar="FILE", help="Write the fixed checkpoint to FILE (atomic, verified). Without it, nothing is written."),
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option("--in-place", help="Replace the input, after keeping the original as FILE.bak."),
    ] = False,
    prefix: Annotated[
        Optional[list[str]],
        typer.Option("--prefix", metavar="TEXT", help="Also remove this leading prefix when every key has it, e.g. Lightning's 'model.' (repeatable)."),
    ] = None,
    add_prefix: Annotated[
        Optional[str],
        typer.Option("--add-prefix", metavar="TEXT", help="Put this prefix in front of every key (after removing wrapper prefixes), e.g. 'module.'."),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", metavar="MODULE:FACTORY", help="Build this model and show its missing/unexpected keys before and after."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Fail (exit 1, write nothing) unless the result loads into --model with strict=True."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Also fix state_dicts where only some keys have a wrapper prefix: remove it where present."),
    ] = False,
    trust: Annotated[
        bool,
        typer.Option("--trust", help="Load with weights_only=False. This RUNS CODE stored in the file: only for files you trust."),
    ] = False,
    output_format: Annotated[
        FixFormat,
        typer.Option("--format", metavar="FORMAT", show_default=False,
                     help="Output format: text (default) for people, json for scripts."),
    ] = FixFormat.text,
) -> None:
    """Remove module. / _orig_mod. prefixes from the state_dicts in a checkpoint.

    DistributedDataParallel and DataParallel save keys as module.fc.weight,
    torch.compile as _orig_mod.fc.weight. This finds every state_dict in the
    file (top level, or nested under "model", "state_dict", "ema", ...), removes
    a prefix only where every key of that state_dict starts with it, renames
    _metadata to match, and leaves everything else (optimizer state, epoch,
    config) as it was. Files are loaded with weights_only=True.

    By default this is a dry run that prints what would change. --output FILE
    or --in-place write the result atomically (temp file, fsync, rename) and
    read it back to compare every tensor bit for bit with the source.

    \b
    Exit codes:
    0  fixed, nothing to fix, or dry run
    1  the written file did not verify, or --strict and the result does not load
    2  bad input: missing, unreadable, truncated or corrupted file; refused by a
       weights-only load (see --trust); mixed prefixes without --force; output
       not writable or disk full. The input is never changed in these cases.
    """
    from convcheck import statedict

    as_json = output_format is FixFormat.json
    options = statedict.FixOptions(
        checkpoint=checkpoint, output=output, in_place=in_place, prefixes=tuple(prefix or ()),
        add_prefix=add_prefix, model=model, strict=strict, force=force, trust=trust,
    )
    try:
        result = statedict.fix_checkpoint(options)
    except statedict.CheckpointError as exc:
        _fail(str(checkpoint), exc.message, exc.kind, exc.exit_code, as_json)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP while writing
        _fail(str(checkpoint), f"Interrupted: nothing was written (the partly written file was removed) and "
              f"{checkpoint} is unchanged.", "interrupted", ExitCode.INTERRUPTED, as_json)
    except Exception as exc:  # a bug in convcheck: still one paragraph, no traceback
        if os.environ.get("CONVCHECK_DEBUG"):
            raise
        message = (
            f"convcheck failed unexpectedly: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
            "The input was not changed. Set CONVCHECK_DEBUG=1 for a traceback and please report it."
        )
        _fail(str(checkpoint), message, "internal-error", ExitCode.INTERNAL_ERROR, as_json)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        render_text(result)
    if result.status == "verification-failed" and result.verification is not None:
        typer.echo(
            "convcheck: the written file did not match the source, so it was removed: "
            + "; ".join(result.verification.problems[:5]),
            err=True,
        )
    raise typer.Exit(int(result.exit_code))


def _fail(checkpoint: str, message: str, kind: str, code: ExitCode, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"version": 1, "checkpoint": checkpoint, "status": "error",
                               "error": {"kind": kind, "message": message}}, indent=2))
    typer.echo(f"convcheck: {message}", err=True)
    raise typer.Exit(int(code))


def render_text(result: "FixResult", file=None) -> None:
    """Print ``result`` for a person (rich text, no colours when not a terminal)."""
    from rich.console import Console
    from rich.markup import escape

    from convcheck.paths import display_path
    from convcheck.statedict import _human

    console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)
    e = escape
    console.print(f"[bold]{e(display_path(result.checkpoint))}[/]  ({result.format}, {_human(result.size_bytes)})")
    for sd in result.state_dicts:
        head = f"  {e(sd.location)}  {sd.keys} keys"
        if sd.status == "clean" and not sd.added_prefix:
            console.print(f"{head}: no wrapper prefix, unchanged")
            continue
        what = []
        if sd.removed_prefix:
            what.append(f"remove [bold]{e(sd.removed_prefix)}[/] (every key starts with it)")
        if sd.forced:
            what.append("remove " + ", ".join(f"[bold]{e(p)}[/] from {n} keys" for p, n in sd.mixed.items()) + " (--force)")
        if sd.added_prefix:
            what.append(f"add [bold]{e(sd.added_prefix)}[/]")
        console.print(f"{head}: " + ", ".join(what) + f" → {sd.keys_changed} keys renamed")
        for old, new in sd.examples:
            console.print(f"      {e(old)} → {e(new)}")
        if sd.keys_changed > len(sd.examples):
            console.print(f"      …and {sd.keys_changed - len(sd.examples)} more")
        if sd.metadata_entries is not None:
            console.print(
                f"      _metadata renamed to match ({sd.metadata_entries} → {sd.metadata_entries_after} module entries)"
            )
    if result.model is not None:
        m = result.model
        console.print(f"  model {e(m.factory)} ({e(m.model_class)}, {m.model_keys} keys)")
        for check in m.state_dicts:
            console.print(
                f"    {e(check.location)}  before: {_diff(check.before)}   after: {_diff(check.after)}"
            )
            for label, examples in (("missing", check.after.missing_examples),
                                    ("unexpected", check.after.unexpected_examples),
                                    ("shape", check.after.shape_examples)):
                if examples:
                    console.print(f"      {label}: " + ", ".join(e(x) for x in examples))
        if m.strict_ok:
            console.print(f"    strict load of {e(m.target or '')}: [green]ok[/]")
        else:
            console.print(f"    strict load of {e(m.target or '')}: [red]fails[/] — {e(m.strict_error or '')}")
    for note in result.notes:
        console.print(f"  note: {e(note)}")
    v = result.verification
    if result.status == "would-fix":
        console.print("dry run: nothing written. Write the fix with --output FILE, or --in-place (keeps FILE.bak).")
    elif result.status == "nothing-to-fix":
        console.print("[green]nothing to fix[/]" + ("" if result.mode == "dry-run" else "; nothing written."))
    elif result.status in ("fixed", "unchanged-copy") and v is not None:
        backup = f" (original kept as {e(display_path(result.backup))})" if result.backup else ""
        label = "wrote" if result.status == "fixed" else "nothing to fix; wrote an identical copy to"
        console.print(
            f"[green]{label}[/] {e(display_path(result.output or ''))}{backup}: verified {v.tensors} tensors, "
            f"{v.storages} storages, {_human(v.bytes_compared)} compared bit for bit"
        )
    elif result.status == "verification-failed":
        console.print("[red]verification failed[/]: nothing was written, the input is unchanged")
    elif result.status == "strict-failed":
        console.print("[red]--strict[/]: the result does not load strictly into the model; nothing written")


def _diff(d) -> str:
    text = f"{d.missing} missing, {d.unexpected} unexpected"
    if d.shape_mismatch:
        text += f", {d.shape_mismatch} shape mismatches"
    return text
