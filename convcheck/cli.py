"""The convcheck command line: thin typer commands; the work lives elsewhere.

Nothing here imports torch: ``convcheck --help`` must start fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from convcheck.exitcodes import ExitCode, describe_exit_codes
from convcheck.fixcli import fix_state_dict

app = typer.Typer(
    name="convcheck",
    help="Why won't my model converge? Run a PyTorch training script for a few steps "
    "under instrumentation and get located findings with a fix.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    junit = "junit"
    github = "github"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"
    never = "never"


_EXIT_CODES_HELP = "Exit codes:\n\n" + describe_exit_codes().replace("\n", "\n\n")


@app.command(
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    epilog=_EXIT_CODES_HELP,
)
def run(
    script: Annotated[Path, typer.Argument(help="The training script, run unmodified (or -m MODULE, as python -m).")],
    script_args: Annotated[
        Optional[list[str]], typer.Argument(help="The script's own arguments.")
    ] = None,
    nproc_per_node: Annotated[
        Optional[int],
        typer.Option(min=1, max=64, help="Start N DDP workers (RANK, WORLD_SIZE, MASTER_* set), like torchrun."),
    ] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Optimizer steps observed per process [20].")] = None,
    max_batches_per_epoch: Annotated[
        Optional[int],
        typer.Option(min=1, help="End each DataLoader epoch after K batches so epoch 2 and 3 fit the budget."),
    ] = None,
    timeout: Annotated[
        Optional[float], typer.Option(min=1, help="Stop a hung or slow run after this many seconds [300].")
    ] = None,
    output_format: Annotated[
        Optional[list[OutputFormat]],
        typer.Option("--format", help="Report format; repeat for several (text, json, sarif, junit, github)."),
    ] = None,
    output: Annotated[
        Optional[list[Path]],
        typer.Option(help="Write the report to FILE (one per --format, in order) or into a folder."),
    ] = None,
    fail_on: Annotated[
        Optional[FailOn], typer.Option(help="Exit 1 when a finding is at or above this severity [error].")
    ] = None,
    select: Annotated[Optional[str], typer.Option(help="Only these checks: codes or names, comma-separated.")] = None,
    ignore: Annotated[Optional[str], typer.Option(help="Skip these checks: codes or names, comma-separated.")] = None,
    show_output: Annotated[bool, typer.Option(help="Stream the script's own stdout/stderr.")] = False,
    trace_dir: Annotated[
        Optional[Path], typer.Option(help="Keep the per-process traces (JSON lines) in this folder.")
    ] = None,
    tensorboard: Annotated[
        Optional[Path], typer.Option(help="Write TensorBoard event files for this run under DIR (one folder per run).")
    ] = None,
    static_only: Annotated[
        bool, typer.Option(help="Only read the script's source: never start it (for pre-commit hooks).")
    ] = False,
    device: Annotated[
        Device, typer.Option(help="auto: map CUDA usage onto the CPU when there is no GPU; cpu: always; cuda: never.")
    ] = Device.auto,
    pretend_cuda: Annotated[
        bool, typer.Option(help="Make torch.cuda.is_available() answer True while CUDA is mapped onto the CPU.")
    ] = False,
    cuda_devices: Annotated[
        Optional[int],
        typer.Option(min=1, max=64, help="GPUs torch.cuda.device_count() reports with --pretend-cuda [--nproc-per-node]."),
    ] = None,
    baseline: Annotated[
        Optional[Path], typer.Option(help="Leave out findings already listed in this baseline file.")
    ] = None,
    write_baseline: Annotated[
        Optional[Path], typer.Option(help="Record this run's findings as the baseline in FILE; exit 0 on findings.")
    ] = None,
) -> None:
    """Run SCRIPT for a few steps under instrumentation and report why it may not converge.

    Settings come from [tool.convcheck] in the nearest pyproject.toml; flags override them.
    """
    from convcheck.runner import UserError, execute, resolve_options

    flags = dict(
        nproc_per_node=nproc_per_node, steps=steps, max_batches_per_epoch=max_batches_per_epoch,
        timeout=timeout, fail_on=fail_on.value if fail_on else None,
        select=_split_codes(select), ignore=_split_codes(ignore),
        formats=[f.value for f in output_format or [OutputFormat.text]], outputs=list(output or []),
        show_output=show_output, trace_dir=trace_dir, static_only=static_only, baseline=baseline,
        write_baseline=write_baseline, device=device.value, pretend_cuda=pretend_cuda, cuda_devices=cuda_devices,
        tensorboard=tensorboard,
    )
    try:
        options = resolve_options(script, list(script_args or []), flags)
    except UserError as exc:
        typer.echo(f"convcheck: {exc}", err=True)
        raise typer.Exit(int(ExitCode.CANNOT_RUN)) from None
    raise typer.Exit(int(execute(options)))


@app.command()
def report(
    trace_dir: Annotated[Path, typer.Option(help="The folder the job's ranks wrote their traces to.")],
    script: Annotated[
        Optional[Path], typer.Argument(help="The training script [read from the traces].")
    ] = None,
    output_format: Annotated[
        Optional[list[OutputFormat]], typer.Option("--format", help="Report format; repeat for several.")
    ] = None,
    output: Annotated[Optional[list[Path]], typer.Option(help="Write the report to FILE or into a folder.")] = None,
    fail_on: Annotated[Optional[FailOn], typer.Option(help="Exit 1 at or above this severity [error].")] = None,
    select: Annotated[Optional[str], typer.Option(help="Only these checks, comma-separated.")] = None,
    ignore: Annotated[Optional[str], typer.Option(help="Skip these checks, comma-separated.")] = None,
    tensorboard: Annotated[Optional[Path], typer.Option(help="Also write TensorBoard event files under DIR.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Leave out findings listed in this baseline.")] = None,
) -> None:
    """Analyse traces a job left behind (``python -m convcheck.worker`` under torchrun or srun)."""
    from convcheck.runner import UserError, execute, resolve_options, script_from_traces

    try:
        target = script or script_from_traces(trace_dir)
        flags = dict(
            fail_on=fail_on.value if fail_on else None, select=_split_codes(select), ignore=_split_codes(ignore),
            formats=[f.value for f in output_format or [OutputFormat.text]], outputs=list(output or []),
            tensorboard=tensorboard, baseline=baseline, from_traces=trace_dir,
        )
        options = resolve_options(target, [], flags)
    except UserError as exc:
        typer.echo(f"convcheck: {exc}", err=True)
        raise typer.Exit(int(ExitCode.CANNOT_RUN)) from None
    raise typer.Exit(int(execute(options)))


@app.command()
def config(
    path: Annotated[Path, typer.Argument(help="A script or folder; the nearest pyproject.toml applies.")] = Path("."),
) -> None:
    """Print the effective configuration: [tool.convcheck] from the nearest pyproject.toml, with defaults."""
    import json

    from convcheck.config import ConfigError, load_config

    try:
        effective = load_config(path if path.exists() else Path("."))
    except ConfigError as exc:
        typer.echo(f"convcheck: {exc}", err=True)
        raise typer.Exit(int(ExitCode.CANNOT_RUN)) from None
    typer.echo(f"# from {effective.source or 'defaults (no [tool.convcheck] found)'}")
    typer.echo(json.dumps(effective.settings.model_dump(by_alias=True), indent=2))


class RulesFormat(str, Enum):
    table = "table"
    markdown = "markdown"


@app.command()
def rules(
    output_format: Annotated[RulesFormat, typer.Option("--format", help="table, or markdown (docs/rules.md)")] = (
        RulesFormat.table
    ),
) -> None:
    """List every check: code, name, default severity, evidence used, summary."""
    from convcheck.explain import print_rules, rules_markdown

    if output_format == RulesFormat.markdown:
        typer.echo(rules_markdown(), nl=False)
    else:
        print_rules()


@app.command()
def explain(code: Annotated[str, typer.Argument(help="A check's code (CC004) or name.")]) -> None:
    """Print a check's documentation: why it matters, a bad and a good example, the fix."""
    from convcheck.explain import print_explanation

    raise typer.Exit(int(print_explanation(code)))


app.command("fix-state-dict")(fix_state_dict)


@app.command()
def schema() -> None:
    """Print the JSON schema of the --format json report."""
    import json

    from convcheck.findings import Report

    typer.echo(json.dumps(Report.model_json_schema(), indent=2))


def _split_codes(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
