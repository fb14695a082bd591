"""The convcheck command line: thin typer commands; the work lives elsewhere.

Nothing here imports torch: ``convcheck --help`` must start fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from convcheck.cliparse import PlainCommand, PlainGroup, between, invoke, refuse_unknown_option
from convcheck.exitcodes import ExitCode, describe_exit_codes
from convcheck.fixcli import fix_state_dict

#: ``-h`` as well as ``--help``, everywhere (click passes context settings down to subcommands).
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="convcheck",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
    cls=PlainGroup,
)


def _print_version(value: bool) -> None:
    if value:
        from convcheck import __version__

        typer.echo(f"convcheck {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, show_default=False,
                     help="Print convcheck's version and exit."),
    ] = False,
) -> None:
    """Why won't my model converge? Run a PyTorch training script for a few steps
    under instrumentation and get located findings with a fix.
    """


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


class ProtectFiles(str, Enum):
    auto = "auto"
    kernel = "kernel"
    python = "python"


class StartMethod(str, Enum):
    auto = "auto"
    forkserver = "forkserver"
    spawn = "spawn"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"
    never = "never"


_EXIT_CODES_HELP = "Exit codes:\n\n" + describe_exit_codes().replace("\n", "\n\n")


@app.command(
    cls=PlainCommand,
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    epilog=_EXIT_CODES_HELP,
    short_help="Run a training script for a few steps and report why it may not converge.",
)
def run(
    ctx: typer.Context,
    script: Annotated[Path, typer.Argument(metavar="SCRIPT", show_default=False,
                                           help="The training script, run unmodified (or -m MODULE, as python -m).")],
    script_args: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="SCRIPT_ARGS", show_default=False, help="The script's own arguments."),
    ] = None,
    nproc_per_node: Annotated[
        Optional[int],
        typer.Option(metavar="N", callback=between(1, 64),
                     help="Start N DDP workers (RANK, WORLD_SIZE, MASTER_* set), like torchrun (1 to 64)."),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(metavar="N", callback=between(1), help="Optimizer steps observed per process (default: 20)."),
    ] = None,
    max_batches_per_epoch: Annotated[
        Optional[int],
        typer.Option(metavar="K", callback=between(0),
                     help="End each DataLoader epoch after K batches so epochs 2 and 3 fit the budget. Without "
                     "it, a training loop's epochs that would not fit three times are ended after steps/3 "
                     "optimizer steps; 0 runs full epochs."),
    ] = None,
    timeout: Annotated[
        Optional[float],
        typer.Option(metavar="SECONDS", callback=between(1),
                     help="Stop a hung or slow run after this many seconds (default: 300)."),
    ] = None,
    output_format: Annotated[
        Optional[list[OutputFormat]],
        typer.Option("--format", metavar="FORMAT",
                     help="Report format: text (default), json, sarif, junit or github; repeat for several."),
    ] = None,
    output: Annotated[
        Optional[list[Path]],
        typer.Option(metavar="PATH",
                     help="Write the report to this file (one per --format, in order), into this folder, "
                     "or '-' for stdout (default: stdout)."),
    ] = None,
    fail_on: Annotated[
        Optional[FailOn],
        typer.Option(metavar="LEVEL",
                     help="Exit 1 when a finding is at or above this severity: error (default), warning, info "
                     "or never."),
    ] = None,
    select: Annotated[
        Optional[str],
        typer.Option(metavar="CODES", show_default=False, help="Only these checks: codes or names, comma-separated."),
    ] = None,
    ignore: Annotated[
        Optional[str],
        typer.Option(metavar="CODES", show_default=False, help="Skip these checks: codes or names, comma-separated."),
    ] = None,
    show_output: Annotated[
        bool, typer.Option("--show-output", show_default=False, help="Stream the script's own stdout and stderr.")
    ] = False,
    trace_dir: Annotated[
        Optional[Path],
        typer.Option(metavar="DIR", show_default=False, help="Keep the per-process traces (JSON lines) in DIR."),
    ] = None,
    tensorboard: Annotated[
        Optional[Path],
        typer.Option(metavar="DIR", show_default=False,
                     help="Write TensorBoard event files for this run under DIR (one folder per run)."),
    ] = None,
    static_only: Annotated[
        bool,
        typer.Option("--static-only", show_default=False,
                     help="Only read the script's source: never start it (for pre-commit hooks)."),
    ] = False,
    device: Annotated[
        Device,
        typer.Option(metavar="DEVICE", show_default=False,
                     help="auto (default): map CUDA usage onto the CPU when there is no GPU; cpu: always; "
                     "cuda: never."),
    ] = Device.auto,
    pretend_cuda: Annotated[
        bool,
        typer.Option("--pretend-cuda", show_default=False,
                     help="Make torch.cuda.is_available() answer True while CUDA is mapped onto the CPU."),
    ] = False,
    cuda_devices: Annotated[
        Optional[int],
        typer.Option(metavar="N", callback=between(1, 64),
                     help="GPUs torch.cuda.device_count() reports with --pretend-cuda (default: --nproc-per-node)."),
    ] = None,
    baseline: Annotated[
        Optional[Path],
        typer.Option(metavar="FILE", show_default=False, help="Leave out findings already listed in this baseline."),
    ] = None,
    write_baseline: Annotated[
        Optional[Path],
        typer.Option(metavar="FILE", show_default=False,
                     help="Record this run's findings as the baseline in FILE; exit 0 on findings."),
    ] = None,
    protect_files: Annotated[
        Optional[ProtectFiles],
        typer.Option(metavar="LEVEL", show_default=False,
                     help="How your files are kept untouched: auto (default: a kernel-level overlay where Linux "
                     "allows it, else Python-level), kernel (refuse to run without it) or python."),
    ] = None,
    start_method: Annotated[
        Optional[StartMethod],
        typer.Option(metavar="METHOD", show_default=False,
                     help="How worker processes start: auto (default: the processes of a several-process run are "
                     "forked from one that imported torch once, on Linux), forkserver (even a single process) or "
                     "spawn (a fresh interpreter each, as torchrun starts them)."),
    ] = None,
) -> None:
    """Run SCRIPT for a few steps under instrumentation and report why it may not converge.

    Settings come from [tool.convcheck] in the nearest pyproject.toml; flags override them.
    """
    from convcheck.runner import UserError, execute, resolve_options

    refuse_unknown_option(ctx, str(script))
    flags = dict(
        nproc_per_node=nproc_per_node, steps=steps, max_batches_per_epoch=max_batches_per_epoch,
        timeout=timeout, fail_on=fail_on.value if fail_on else None,
        select=_split_codes(select), ignore=_split_codes(ignore),
        formats=[f.value for f in output_format or [OutputFormat.text]], outputs=list(output or []),
        show_output=show_output, trace_dir=trace_dir, static_only=static_only, baseline=baseline,
        write_baseline=write_baseline, device=device.value, pretend_cuda=pretend_cuda, cuda_devices=cuda_devices,
        tensorboard=tensorboard, protect_files=protect_files.value if protect_files else None,
        start_method=start_method.value if start_method else None,
    )
    try:
        options = resolve_options(script, list(script_args or []), flags)
    except UserError as exc:
        typer.echo(f"convcheck: {exc}", err=True)
        raise typer.Exit(int(ExitCode.CANNOT_RUN)) from None
    raise typer.Exit(int(execute(options)))


@app.command(cls=PlainCommand, short_help="Analyse the traces a torchrun or srun job left behind.")
def report(
    trace_dir: Annotated[
        Path, typer.Option(metavar="DIR", show_default=False, help="The folder the job's ranks wrote their traces to.")
    ],
    script: Annotated[
        Optional[Path],
        typer.Argument(metavar="SCRIPT", show_default=False,
                       help="The training script (default: the one the traces name)."),
    ] = None,
    output_format: Annotated[
        Optional[list[OutputFormat]],
        typer.Option("--format", metavar="FORMAT",
                     help="Report format: text (default), json, sarif, junit or github; repeat for several."),
    ] = None,
    output: Annotated[
        Optional[list[Path]],
        typer.Option(metavar="PATH", help="Write the report to a file, into a folder, or '-' for stdout (default)."),
    ] = None,
    fail_on: Annotated[
        Optional[FailOn],
        typer.Option(metavar="LEVEL", help="Exit 1 at or above this severity: error (default), warning, info or never."),
    ] = None,
    select: Annotated[
        Optional[str], typer.Option(metavar="CODES", show_default=False, help="Only these checks, comma-separated.")
    ] = None,
    ignore: Annotated[
        Optional[str], typer.Option(metavar="CODES", show_default=False, help="Skip these checks, comma-separated.")
    ] = None,
    tensorboard: Annotated[
        Optional[Path],
        typer.Option(metavar="DIR", show_default=False, help="Also write TensorBoard event files under DIR."),
    ] = None,
    baseline: Annotated[
        Optional[Path],
        typer.Option(metavar="FILE", show_default=False, help="Leave out findings listed in this baseline."),
    ] = None,
) -> None:
    """Analyse the traces a job left behind (python -m convcheck.worker under torchrun or srun)."""
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


class ConfigFormat(str, Enum):
    text = "text"
    json = "json"


@app.command(cls=PlainCommand, short_help="Print the effective settings and where each came from.")
def config(
    path: Annotated[
        Path,
        typer.Argument(metavar="PATH", show_default=False,
                       help="A script or folder; the nearest pyproject.toml applies (default: the current folder)."),
    ] = Path("."),
    output_format: Annotated[
        ConfigFormat,
        typer.Option("--format", metavar="FORMAT", show_default=False,
                     help="text (default) for people, json for scripts."),
    ] = ConfigFormat.text,
) -> None:
    """Print the effective settings: [tool.convcheck] from the nearest pyproject.toml, and defaults."""
    from convcheck.config import ConfigError, describe_config, load_config

    try:
        effective = load_config(path if path.exists() else Path("."))
    except ConfigError as exc:
        typer.echo(f"convcheck: {exc}", err=True)
        raise typer.Exit(int(ExitCode.CANNOT_RUN)) from None
    typer.echo(describe_config(effective, output_format.value), nl=False)


class RulesFormat(str, Enum):
    table = "table"
    markdown = "markdown"


@app.command(cls=PlainCommand, short_help="List every check: code, name, default severity, summary.")
def rules(
    output_format: Annotated[
        RulesFormat,
        typer.Option("--format", metavar="FORMAT", show_default=False,
                     help="table (default), or markdown (docs/rules.md)."),
    ] = RulesFormat.table,
) -> None:
    """List every check: code, name, default severity, evidence used, summary."""
    from convcheck.explain import print_rules, rules_markdown

    if output_format == RulesFormat.markdown:
        typer.echo(rules_markdown(), nl=False)
    else:
        print_rules()


@app.command(cls=PlainCommand, short_help="Print a check's documentation: why, a bad and a good example, the fix.")
def explain(
    code: Annotated[str, typer.Argument(metavar="CHECK", show_default=False, help="A check's code (CC004) or name.")],
) -> None:
    """Print a check's documentation: why it matters, a bad and a good example, the fix."""
    from convcheck.explain import print_explanation

    raise typer.Exit(int(print_explanation(code)))


app.command("fix-state-dict", cls=PlainCommand, short_help="Remove module. / _orig_mod. prefixes from a checkpoint's state_dicts.")(
    fix_state_dict
)


@app.command(cls=PlainCommand, short_help="Print the JSON schema of the --format json report.")
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
        sys.exit(invoke(app, prog_name="convcheck"))
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
