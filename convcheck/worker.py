"""Worker mode: plug convcheck into a launch you already have (torchrun, srun, a PyTorchJob).

    torchrun --nnodes 2 --nproc-per-node 4 ... -m convcheck.worker --trace-dir /shared/cc train.py --lr 0.1
    torchrun ... -m convcheck.worker --trace-dir /shared/cc -m mypkg.train --lr 0.1

Each rank runs the script under the probe and writes its trace to ``--trace-dir`` (a
folder every node can reach). Without a shared folder, the traces are gathered to rank 0
over the job's own process group when the run stops. Rank 0 waits for the other ranks'
traces, analyses them and writes the report; ``convcheck report --trace-dir DIR`` can do
the same afterwards. convcheck makes no rendezvous or transport of its own.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from convcheck.cli import HELP_OPTIONS, Device, FailOn, OutputFormat, _split_codes
from convcheck.cliparse import PlainCommand, between, invoke, refuse_unknown_option
from convcheck.exitcodes import ExitCode
from convcheck.runtime import env

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None, context_settings=HELP_OPTIONS)


@app.command(
    cls=PlainCommand,
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True, **HELP_OPTIONS},
)
def worker(
    ctx: typer.Context,
    script: Annotated[Path, typer.Argument(metavar="SCRIPT", show_default=False,
                                           help="The training script, run unmodified (or -m MODULE, as python -m).")],
    script_args: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="SCRIPT_ARGS", show_default=False, help="The script's own arguments."),
    ] = None,
    trace_dir: Annotated[
        Optional[Path],
        typer.Option(metavar="DIR", help="A folder every node can reach; without it traces are gathered to rank 0."),
    ] = None,
    steps: Annotated[
        int,
        typer.Option(metavar="N", callback=between(1), show_default=False,
                     help="Optimizer steps observed per process (default: 20)."),
    ] = 20,
    max_batches_per_epoch: Annotated[
        Optional[int],
        typer.Option(metavar="K", callback=between(0),
                     help="End each epoch after K batches (default: a training loop's long epochs end after "
                     "steps/3 optimizer steps; 0: full epochs)."),
    ] = None,
    device: Annotated[
        Device,
        typer.Option(metavar="DEVICE", show_default=False,
                     help="auto (default), cpu or cuda: map CUDA usage onto the CPU (as convcheck run)."),
    ] = Device.auto,
    output_format: Annotated[
        Optional[list[OutputFormat]],
        typer.Option("--format", metavar="FORMAT",
                     help="Report format: text (default), json, sarif, junit or github; repeat for several."),
    ] = None,
    output: Annotated[
        Optional[list[Path]],
        typer.Option(metavar="PATH", help="Where rank 0 writes the report(s): files, a folder, or '-' (default)."),
    ] = None,
    fail_on: Annotated[
        FailOn,
        typer.Option(metavar="LEVEL", show_default=False,
                     help="Rank 0 exits 1 at or above this severity: error (default), warning, info or never."),
    ] = FailOn.error,
    select: Annotated[Optional[str], typer.Option(metavar="CODES", help="Only these checks, comma-separated.")] = None,
    ignore: Annotated[Optional[str], typer.Option(metavar="CODES", help="Skip these checks, comma-separated.")] = None,
    wait: Annotated[
        float,
        typer.Option(metavar="SECONDS", show_default=False,
                     help="Seconds rank 0 waits for the other ranks' traces (default: 60)."),
    ] = 60.0,
) -> None:
    """Run SCRIPT under the probe in this rank; rank 0 writes the job's report."""
    from convcheck.runtime.bootstrap import activate
    from convcheck.runtime.launcher import site_dir
    from convcheck.runtime.worker import leave, run_entry

    refuse_unknown_option(ctx, str(script))

    from convcheck.modules import ModuleNotRunnable, module_file, split_module_target

    try:
        module, script_args = split_module_target(str(script), list(script_args or []))
        if module is not None:
            script = module_file(module)
    except ModuleNotRunnable as exc:
        typer.echo(f"convcheck: {exc}", err=True)
        raise typer.Exit(int(ExitCode.CANNOT_RUN)) from None
    if not script.is_file():
        typer.echo(f"convcheck: {script}: no such file. Give the path of a Python training script.", err=True)
        raise typer.Exit(int(ExitCode.CANNOT_RUN))
    gather = trace_dir is None
    folder = Path(tempfile.mkdtemp(prefix="convcheck-rank-")) if gather else trace_dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[env.TRACE_DIR] = str(folder)
    # One scratch folder for the job where the trace folder is shared: a checkpoint rank 0
    # saves is found by the rank that loads it.
    os.environ[env.SCRATCH_DIR] = str(folder / "scratch")
    os.environ[env.STEPS] = str(steps)
    os.environ[env.DEVICE] = device.value
    if max_batches_per_epoch:
        os.environ[env.MAX_BATCHES] = str(max_batches_per_epoch)
    elif max_batches_per_epoch is None:
        from convcheck.runtime.epochcap import steps_per_epoch

        os.environ[env.EPOCH_STEPS] = str(steps_per_epoch(steps))
    # Children (mp.spawn, DataLoader workers with spawn) load the probe through the site folder.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site_dir(), os.environ.get("PYTHONPATH")]))
    (folder / "scratch").mkdir(exist_ok=True)
    from convcheck.runtime import fsguard

    fsguard.install_from_env()
    activate()

    outcome = run_entry(str(script), [str(script), *script_args], module=module)
    # The report rank 0 writes is convcheck's own output, not the script's: no longer guarded.
    fsguard.uninstall()
    code = int(outcome["code"])
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if gather:
        _gather_to_rank0(folder, rank)
    if rank == 0:
        _wait_for_ranks(folder, world, wait)
        from convcheck.runner import execute, resolve_options

        options = resolve_options(
            script, [],
            dict(fail_on=fail_on.value, select=_split_codes(select), ignore=_split_codes(ignore),
                 formats=[f.value for f in output_format or [OutputFormat.text]], outputs=list(output or []),
                 from_traces=folder),
        )
        options.steps = steps
        report_code = int(execute(options))
        if report_code == ExitCode.FINDINGS and code == 0:
            # torchrun reports any non-zero exit as a failed child with a traceback: say first what it means.
            sys.stdout.flush()
            sys.stderr.write(GATE_NOTE.format(fail_on=fail_on.value))
            sys.stderr.flush()
        code = report_code if code == 0 else code
    import shutil

    # The gathered copies were this rank's own temporary folder; a shared folder keeps its traces.
    shutil.rmtree(folder if gather else folder / "scratch", ignore_errors=True)
    leave(code)


#: What rank 0 says when findings make it exit 1, before the launcher's "ChildFailedError" traceback.
GATE_NOTE = (
    "convcheck: rank 0 exits 1 because of findings at or above --fail-on {fail_on}: this is the gate, not a crash "
    "(the launcher may report it as a failed child below). The report is above.\n"
)


def _gather_to_rank0(folder: Path, rank: int) -> None:
    """Send this node's trace files to rank 0 over the job's own process group, if it is still up."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    from convcheck.runtime.probe import active_probe

    probe = active_probe()
    if probe is not None:
        probe.writer.flush()
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if rank != 0 else {}
    gathered: list | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(files, gathered, dst=0)
    if rank == 0 and gathered:
        for payload in gathered:
            for name, data in (payload or {}).items():
                (folder / name).write_bytes(data)


def _wait_for_ranks(folder: Path, world: int, timeout: float) -> None:
    """Until every rank's entry process left its exit record (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("exit-*.json"))) < world and time.monotonic() < deadline:
        time.sleep(0.2)


def main() -> None:
    """``python -m convcheck.worker``."""
    import sys

    sys.exit(invoke(app))


if __name__ == "__main__":
    main()
