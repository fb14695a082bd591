"""Worker mode: plug convcheck into a launch you already have (torchrun, srun, a PyTorchJob).

    torchrun --nnodes 2 --nproc-per-node 4 ... -m convcheck.worker --trace-dir /shared/cc train.py --lr 0.1

Each rank runs the script under the probe and writes its trace to ``--trace-dir`` (a
folder every node can reach). Without a shared folder, the traces are gathered to rank 0
over the job's own process group when the run stops. Rank 0 waits for the other ranks'
traces, analyses them and writes the report; ``convcheck report --trace-dir DIR`` can do
the same afterwards. convcheck makes no rendezvous or transport of its own.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from convcheck.cli import Device, FailOn, OutputFormat, _split_codes
from convcheck.exitcodes import ExitCode
from convcheck.runtime import env

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def worker(
    script: Annotated[Path, typer.Argument(help="The training script, run unmodified.")],
    script_args: Annotated[Optional[list[str]], typer.Argument(help="The script's own arguments.")] = None,
    trace_dir: Annotated[
        Optional[Path], typer.Option(help="A folder every node can reach; without it traces are gathered to rank 0.")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps observed per process.")] = 20,
    max_batches_per_epoch: Annotated[Optional[int], typer.Option(min=1, help="End each epoch after K batches.")] = None,
    device: Annotated[Device, typer.Option(help="auto | cpu | cuda: map CUDA usage onto the CPU.")] = Device.auto,
    output_format: Annotated[Optional[list[OutputFormat]], typer.Option("--format", help="Report format(s).")] = None,
    output: Annotated[Optional[list[Path]], typer.Option(help="Where rank 0 writes the report(s).")] = None,
    fail_on: Annotated[FailOn, typer.Option(help="Rank 0 exits 1 at or above this severity.")] = FailOn.error,
    select: Annotated[Optional[str], typer.Option(help="Only these checks, comma-separated.")] = None,
    ignore: Annotated[Optional[str], typer.Option(help="Skip these checks, comma-separated.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds rank 0 waits for the other ranks' traces.")] = 60.0,
) -> None:
    """Run SCRIPT under the probe in this rank; rank 0 writes the job's report."""
    from convcheck.runtime.bootstrap import activate
    from convcheck.runtime.launcher import site_dir
    from convcheck.runtime.worker import leave, run_entry

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
    # Children (mp.spawn, DataLoader workers with spawn) load the probe through the site folder.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site_dir(), os.environ.get("PYTHONPATH")]))
    (folder / "scratch").mkdir(exist_ok=True)
    from convcheck.runtime import fsguard

    fsguard.install_from_env()
    activate()

    outcome = run_entry(str(script), [str(script), *(script_args or [])])
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
        code = report_code if code == 0 else code
    import shutil

    # The gathered copies were this rank's own temporary folder; a shared folder keeps its traces.
    shutil.rmtree(folder if gather else folder / "scratch", ignore_errors=True)
    leave(code)


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
    app()


if __name__ == "__main__":
    main()
