"""``convcheck run`` from start to end: static pass, launch, analysis, report, exit code."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from convcheck.exitcodes import ExitCode
from convcheck.findings import EpochCap, ProcessSummary, Report, RunSummary, Severity
from convcheck.paths import display_loc
from convcheck.report.context import RenderContext


@dataclass
class RunOptions:
    """Everything ``convcheck run`` was asked to do (configuration file and flags merged)."""

    script: Path
    script_args: list[str] = field(default_factory=list)
    #: ``-m MODULE``: run this module as ``python -m`` would; ``script`` is then its source file.
    module: str | None = None
    nproc_per_node: int | None = None
    steps: int = 20
    max_batches_per_epoch: int | None = None
    #: How the user's files are kept untouched: "auto", "kernel" or "python" (``runtime.sandbox.MODES``).
    protect_files: str = "auto"
    #: How workers start: "auto", "forkserver" or "spawn" (``runtime.launcher.LaunchSpec.start_method``).
    start_method: str = "auto"
    timeout: float = 300.0
    formats: list[str] = field(default_factory=lambda: ["text"])
    outputs: list[Path] = field(default_factory=list)
    fail_on: str = "error"
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    show_output: bool = False
    trace_dir: Path | None = None
    static_only: bool = False
    device: str = "auto"
    pretend_cuda: bool = False
    cuda_devices: int | None = None
    tensorboard: Path | None = None
    #: Analyse the traces in this folder instead of running the script (``convcheck report``).
    from_traces: Path | None = None
    baseline: Path | None = None
    write_baseline: Path | None = None
    per_file_ignores: dict[str, list[str]] = field(default_factory=dict)
    check_options: dict[str, dict] = field(default_factory=dict)
    config_source: str | None = None


class UserError(Exception):
    """Bad input: reported as one paragraph with exit code 2."""


#: Settings that both ``[tool.convcheck]`` and the command line can give (the flag wins).
MERGED_SETTINGS = ("select", "ignore", "fail_on", "steps", "nproc_per_node", "timeout", "max_batches_per_epoch",
                   "protect_files", "start_method")


def resolve_options(script: Path, script_args: list[str], flags: dict) -> RunOptions:
    """Merge the nearest ``[tool.convcheck]`` with the flags given (None or [] = not given)."""
    from convcheck.config import ConfigError, load_config
    from convcheck.modules import ModuleNotRunnable, module_file, split_module_target

    try:
        module, script_args = split_module_target(str(script), script_args)
        if module is not None:
            script = module_file(module)
    except ModuleNotRunnable as exc:
        raise UserError(str(exc)) from exc
    try:
        config = load_config(script.parent if script.parent.exists() else Path.cwd())
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    settings = config.settings
    merged = {}
    for key in MERGED_SETTINGS:
        value = flags.pop(key, None)
        merged[key] = value if value not in (None, []) else getattr(settings, key)
    return RunOptions(
        script=script, script_args=script_args, module=module, per_file_ignores=dict(settings.per_file_ignores),
        check_options=dict(settings.checks), config_source=config.source, **merged, **flags,
    )


def script_from_traces(trace_dir: Path) -> Path:
    """The script the traced job ran, from the first entry process's recorded argv."""
    from convcheck.runtime.trace import read_trace_dir

    if not trace_dir.is_dir():
        raise UserError(f"--trace-dir {trace_dir}: no such folder.")
    for proc in read_trace_dir(trace_dir).processes:
        header = proc.header
        if header.get("role") == "entry" and header.get("argv") and isinstance(header["argv"][0], str):
            return Path(header["argv"][0])
    raise UserError(
        f"--trace-dir {trace_dir} holds no trace of a script run by convcheck's worker: "
        "run the job with `python -m convcheck.worker --trace-dir DIR train.py`, or name the script."
    )


def _terminate_as_interrupt() -> None:
    """SIGTERM and SIGHUP clean up like Ctrl-C: every process the run started is stopped."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)


def execute(options: RunOptions) -> ExitCode:
    """Run the whole pipeline and return the exit code; never raises."""
    from convcheck.runtime import reaper

    _terminate_as_interrupt()
    started = None if options.static_only else _now_ticks()
    try:
        return _execute(options)
    finally:
        # Whatever the run started and is still alive now (a setsid'd child whose tagged
        # environment was cleared) goes with it.
        reaper.sweep_since(started)


def _now_ticks() -> int | None:
    """Clock ticks since boot now, on the scale of /proc/PID/stat start times."""
    try:
        uptime = float(open("/proc/uptime", encoding="ascii").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return int(uptime * os.sysconf("SC_CLK_TCK"))


def _execute(options: RunOptions) -> ExitCode:
    try:
        destinations = plan_outputs(options)
        report, code, ctx = diagnose(options)
        if report.run.status == "interrupted":  # side-by-side runs stop without raising
            _error("Interrupted: every process the run started was stopped.")
        if options.write_baseline is not None:
            from convcheck.baseline import write_baseline

            write_baseline(report.findings, options.write_baseline, ctx.root)
            if code == ExitCode.FINDINGS:
                code = ExitCode.OK
    except UserError as exc:
        _error(str(exc))
        return ExitCode.CANNOT_RUN
    except KeyboardInterrupt:
        _error("Interrupted: every process the run started was stopped.")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug in convcheck: one paragraph, not a traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        _error(
            f"convcheck failed internally ({type(exc).__name__}: {exc}) at "
            f"{Path(where.filename).name}:{where.lineno}. This is a bug in convcheck; please report it "
            "with the command you ran."
        )
        return ExitCode.INTERNAL_ERROR
    for fmt, path in destinations:
        try:
            write_report(report, fmt, path, ctx)
        except OSError as exc:
            _error(f"Cannot write the {fmt} report to {path}: {exc.strerror or exc}.")
            return ExitCode.CANNOT_RUN
    return code


def plan_outputs(options: RunOptions) -> list[tuple[str, Path | None]]:
    """Where each format goes: stdout, a file each, or files in one folder; never two to one file."""
    from convcheck.report.destination import FILE_NAMES, describe, identity, is_stdout

    formats, outputs = options.formats or ["text"], options.outputs
    if len(set(formats)) != len(formats):
        raise UserError(f"--format lists a format twice: {', '.join(formats)}.")
    if not outputs:
        if len(formats) > 1:
            raise UserError(
                "Several formats need --output: one folder for all of them, or one --output per --format, in order."
            )
        return [(formats[0], None)]
    if len(outputs) == len(formats):
        if len(formats) == 1 and outputs[0].is_dir():
            planned = [(formats[0], outputs[0] / FILE_NAMES[formats[0]])]
        else:
            planned = list(zip(formats, outputs))
    elif len(outputs) == 1 and not is_stdout(outputs[0]):
        folder = outputs[0]
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--output {folder} is a file; with several formats give a folder or one file each.")
        planned = [(fmt, folder / FILE_NAMES[fmt]) for fmt in formats]
    else:
        raise UserError(f"{len(outputs)} --output values for {len(formats)} formats: give one folder or one per format.")
    script = identity(options.script)
    seen: dict[tuple, str] = {}
    for fmt, path in planned:
        where = identity(path)
        if path is not None and where == script:
            raise UserError(f"--output {path} is the script itself; convcheck never overwrites your files.")
        if where in seen:
            raise UserError(
                f"--output: the {seen[where]} and {fmt} reports would both be written to {describe(path)}, and "
                "one would replace or garble the other. Give each format its own file, or one folder for all."
            )
        seen[where] = fmt
    return [(fmt, None if is_stdout(path) else path) for fmt, path in planned]


def diagnose(options: RunOptions) -> tuple[Report, ExitCode, RenderContext]:
    """Static pass, instrumented run and analysis; the report, its exit code and render settings."""
    from convcheck.analysis import run_checks, sort_findings
    from convcheck.fingerprints import repo_root
    from convcheck.catalog import SelectionError, select_checks
    from convcheck.static.context import ScriptError, load_script
    from convcheck.suppress import apply_suppressions

    script = options.script
    try:
        checks = select_checks(options.select, options.ignore, options.check_options)
    except SelectionError as exc:
        raise UserError(str(exc)) from exc
    # Nothing runs with --static-only, so every argument is a script to read (pre-commit passes many).
    scripts = [script, *map(Path, options.script_args)] if options.static_only else [script]
    try:
        contexts = [load_script(path) for path in scripts]
    except ScriptError as exc:
        raise UserError(str(exc)) from exc
    render_ctx = RenderContext(root=repo_root(script), fail_on=options.fail_on, checks=[type(c) for c in checks])
    if options.baseline is not None:
        # Every input is checked before anything runs: a bad baseline found after the run is too late.
        from convcheck.baseline import BaselineError, read_baseline

        try:
            read_baseline(options.baseline)
        except BaselineError as exc:
            raise UserError(str(exc)) from exc

    trace = None
    if options.static_only:
        summary = RunSummary(status="static-only", steps_budget=0)
        findings, check_errors = [], []
        for ctx in contexts:
            found, errors = run_checks(checks, ctx, None, runtime=False)
            findings += found
            check_errors += errors
    elif options.from_traces is not None:
        summary, findings, check_errors, trace = _recorded(options, checks, contexts[0])
    else:
        summary, findings, check_errors, trace = _instrumented(options, checks, contexts[0])
    config_dir = Path(options.config_source).parent if options.config_source else None
    findings = apply_suppressions(
        findings, options.per_file_ignores, config_dir, extra_files=[str(path) for path in scripts]
    )
    selected = {type(c).code for c in checks}
    findings = sort_findings([f for f in findings if f.code in selected])
    if options.baseline is not None:
        from convcheck.baseline import BaselineError, filter_baseline

        try:
            findings, known = filter_baseline(findings, options.baseline, render_ctx.root)
        except BaselineError as exc:
            raise UserError(str(exc)) from exc
        summary.baseline_suppressed = known
    if check_errors:
        summary.error = "; ".join(filter(None, [summary.error, *check_errors]))
    report = Report(script=" ".join(map(str, scripts)), findings=findings, run=summary)
    if options.tensorboard is not None and trace is not None:
        from convcheck.report.tensorboard import write_tensorboard

        try:
            folder = write_tensorboard(trace, report, options.tensorboard)
        except OSError as exc:
            raise UserError(f"Cannot write TensorBoard logs to {options.tensorboard}: {exc.strerror or exc}.") from exc
        report.run.tensorboard_dir = str(folder)
    return report, exit_code_for(report, options.fail_on), render_ctx


def _recorded(options: RunOptions, checks: list, ctx):  # noqa: ANN001, ANN202
    """Analyse traces another launcher left in ``options.from_traces`` (torchrun, srun)."""
    from convcheck.analysis import run_checks
    from convcheck.runtime.launcher import result_from_trace_dir
    from convcheck.runtime.trace import read_trace_dir

    folder = options.from_traces
    from convcheck.runtime.recorders import register_schemas

    register_schemas()
    trace = read_trace_dir(folder, steps_budget=options.steps)
    _warn_damaged(folder, trace.damaged)
    trace.world_size = max([p.world_size for p in trace.processes] or [1])
    launched = result_from_trace_dir(folder)
    summary = summarize_run(launched, trace, options)
    summary.nproc_per_node = trace.world_size
    summary.file_changes = _file_changes([launched])
    summary.file_protection = "python"
    findings, check_errors = run_checks(checks, ctx, trace, runtime=True)
    return summary, findings, check_errors, trace


def _warn_damaged(folder: Path, damaged: list[str], shown: int = 10) -> None:
    """Say on stderr which parts of a damaged trace folder were left out of the analysis."""
    for line in damaged[:shown]:
        _error(f"warning: {folder / line}")
    if len(damaged) > shown:
        _error(f"warning: {len(damaged) - shown} more damaged line(s) in {folder} were left out.")


def _instrumented(options: RunOptions, checks: list, ctx):  # noqa: ANN001, ANN202
    """Launch the main run (and any extra runs checks asked for), then analyse the traces.

    Returns the run summary, the findings, the checks that failed, and the main trace.
    """
    from convcheck.analysis import run_checks
    from convcheck.extraruns import launch_after, launch_together, made_later, not_needed, report_rows
    from convcheck.registry import CheckOptionError, RunVariant
    from convcheck.runtime.launcher import LaunchSpec, usable_cores
    from convcheck.static.ports import binds_fixed_port
    from convcheck.runtime.trace import read_trace_dir

    script = options.script
    if options.protect_files == "kernel":
        from convcheck.runtime.sandbox import probe_available

        reason = probe_available()
        if reason is not None:
            raise UserError(f"--protect-files kernel: no kernel-level layer can be built here ({reason}). "
                            "Run with --protect-files auto to be protected at the Python level instead.")
    if options.trace_dir is not None:
        run_dir = options.trace_dir.resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"--trace-dir {options.trace_dir} is not empty: give a new or empty folder.")
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        from convcheck.runtime import reaper

        reaper.clean_stale_runs()
        run_dir = Path(tempfile.mkdtemp(prefix="convcheck-run-"))
        reaper.claim(run_dir)
    try:
        variants: dict[str, RunVariant] = {}
        asked_by: dict[str, str] = {}
        for check in checks:
            try:
                asked = check.extra_runs(options.nproc_per_node, options.steps, ctx)
            except CheckOptionError as exc:
                raise UserError(f"[tool.convcheck.checks.{check.code}] in {options.config_source}: {exc}") from exc
            variants.update(asked)
            asked_by.update(dict.fromkeys(asked, check.code))

        recorders = _recorders_for(checks)

        def spec_for(folder: Path, nproc: int | None, steps: int, show_output: bool,
                     repeat_first_batch: bool = False) -> LaunchSpec:
            return LaunchSpec(
                script=script.resolve(), script_args=options.script_args, module=options.module, run_dir=folder,
                steps=steps,
                timeout=options.timeout, nproc_per_node=nproc,
                max_batches_per_epoch=options.max_batches_per_epoch, show_output=show_output,
                device=options.device, pretend_cuda=options.pretend_cuda,
                cuda_devices=options.cuda_devices or nproc or 1, repeat_first_batch=repeat_first_batch,
                terminal_stdin=folder == run_dir, protect_files=options.protect_files, recorders=recorders,
                start_method=options.start_method,
                epoch_steps=auto_epoch_steps(options),
            )

        specs = {"main": spec_for(run_dir, options.nproc_per_node, options.steps, options.show_output)}
        for label, variant in variants.items():
            specs[label] = spec_for(run_dir / "variants" / label, variant.nproc_per_node, variant.steps, False,
                                    variant.repeat_first_batch)
        cores = usable_cores()
        later = made_later(variants, options.nproc_per_node or 1, cores)
        # Runs side by side would fight over a port the script chose itself.
        launches = launch_together({label: spec for label, spec in specs.items() if label not in later},
                                   one_after_another=binds_fixed_port(ctx))
        launched = launches.pop("main")
        trace = read_trace_dir(launched.trace_dir, world_size=options.nproc_per_node or 1, steps_budget=options.steps)
        left_out: dict[str, str] = {}
        settled_early: set[str] = set()
        for label in later:
            why = not_needed(variants[label], launched, trace, options.nproc_per_node or 1, cores)
            if why is None:
                launches[label], stopped = launch_after(specs[label], variants[label], trace)
                if stopped:
                    settled_early.add(label)
            else:
                left_out[label] = f"{asked_by[label]}'s {label} run was not made: {why}."
        for label, other in launches.items():
            variant = variants[label]
            trace.variants[label] = read_trace_dir(
                other.trace_dir, world_size=variant.nproc_per_node or 1, steps_budget=variant.steps
            )
        summary = summarize_run(launched, trace, options)
        summary.extra_runs = report_rows(variants, asked_by, trace, later, left_out, settled_early)
        summary.file_changes = _file_changes([launched, *launches.values()])
        _protection(summary, launched)
        findings, check_errors = run_checks(checks, ctx, trace, runtime=True)
    finally:
        # Files the script saved are evidence only while the run is analysed.
        shutil.rmtree(run_dir / "scratch", ignore_errors=True)
        for variant_dir in (run_dir / "variants").glob("*/scratch"):
            shutil.rmtree(variant_dir, ignore_errors=True)
        if options.trace_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    return summary, findings, check_errors, trace


def _recorders_for(checks: list) -> list[str]:
    """The recorders the selected checks need; a check that needs one nobody provides is bad input."""
    from convcheck.runtime.recorders import available_recorders, needed_by, register_schemas

    known = available_recorders()
    register_schemas(known)
    for check in checks:
        missing = sorted(set(check.needs) - set(known))
        if missing:
            raise UserError(f"{check.code} ({check.name}) needs the recorder(s) {', '.join(missing)}, which no "
                            f"installed package provides; known recorders: {', '.join(sorted(known))}.")
    return needed_by(checks)


def auto_epoch_steps(options: RunOptions) -> int | None:
    """Optimizer steps a training loop's epoch lasts when the user chose no epoch length; None otherwise.

    Taken from the main run's budget for every run, so that CC002's shorter repeat cuts its epochs where
    the main run does.
    """
    from convcheck.runtime.epochcap import steps_per_epoch

    return steps_per_epoch(options.steps) if options.max_batches_per_epoch is None else None


def epoch_summary(trace, options: RunOptions) -> EpochCap:  # noqa: ANN001
    """How the run's epochs were shortened, from the options and the epochs the probes ended early."""
    if options.max_batches_per_epoch:
        return EpochCap(mode="fixed", batches=options.max_batches_per_epoch)
    if options.max_batches_per_epoch == 0:
        return EpochCap(mode="off")
    rows: dict[tuple, dict] = {}
    for _, event in trace.events("epoch_cap"):
        file, line = (event.get("loc") or [None, None])[:2]
        rows.setdefault((event.get("loader"), file, line), {
            "loader": event.get("loader"), "batches": event.get("batches"), "full_batches": event.get("full_batches"),
            "file": file, "line": line, "validation": event.get("steps") is None,
        })
    return EpochCap(mode="auto", steps_per_epoch=auto_epoch_steps(options), loaders=list(rows.values()))


def _file_changes(launches: list) -> list[dict]:  # noqa: ANN001
    """What the script did to paths outside the run's folders, in every run it made (no repeats)."""
    from convcheck.runtime.fsguard import read_journal

    seen: dict[tuple, dict] = {}
    for launched in launches:
        for row in [*read_journal(launched.trace_dir), *launched.kernel_changes]:
            seen.setdefault((row["op"], row["path"]), row)
    return list(seen.values())


def _protection(summary: RunSummary, launched) -> None:  # noqa: ANN001
    """Say which level kept the user's files untouched, where, and why not more."""
    protection = launched.protection
    summary.file_protection = protection.get("level", "python")
    summary.worker_start = launched.worker_start
    summary.protected_folders = list(protection.get("overlaid", []))
    summary.unprotected_mounts = list(protection.get("passed_through", []))
    summary.protection_note = protection.get("why")


def summarize_run(launched, trace, options: RunOptions) -> RunSummary:  # noqa: ANN001
    """How the run went, from the launcher's view and the traces."""
    from convcheck.runtime.trace import RunTrace

    trace: RunTrace
    by_pid = {p.pid: p for p in trace.processes}
    processes = []
    for worker in launched.workers:
        proc = by_pid.get(worker.pid)
        outcome = worker.outcome
        processes.append(
            ProcessSummary(
                pid=worker.pid, rank=(proc.rank if proc is not None and proc.rank is not None else worker.rank),
                role="worker", exit_code=worker.returncode,
                steps=outcome.get("steps", proc.steps if proc else 0),
                skipped_steps=_skipped_steps(proc),
                backwards=len(proc.of("backward")) if proc else 0,
                crashed=outcome.get("status") == "crashed" or (worker.returncode not in (0, None) and not outcome),
                error=outcome.get("error"),
            )
        )
    for proc in trace.processes:
        if proc.pid in {w.pid for w in launched.workers} or not proc.is_trainer:
            continue
        processes.append(
            ProcessSummary(pid=proc.pid, rank=proc.rank, role="child", steps=proc.steps,
                           skipped_steps=_skipped_steps(proc), backwards=len(proc.of("backward")))
        )
    # A step a GradScaler skipped (inf/NaN gradients) is still a training step taken.
    skipped = sum(1 for _, e in trace.events("scaler") if e.get("call") == "step" and e.get("skipped"))
    total_steps = sum(p.steps for p in processes) + skipped
    summary = RunSummary(
        steps_budget=options.steps, nproc_per_node=options.nproc_per_node or 1,
        wall_seconds=round(launched.wall_seconds, 2), processes=processes, script_argv=options.script_args,
    )
    summary.epochs = epoch_summary(trace, options)
    summary.redirected_saves = _located(trace, "save", "path", only=lambda e: bool(e.get("redirected_to")))
    # Mappings made inside a library (Lightning, Inductor) are not the user's to change: left out.
    summary.device_mapping = _located(trace, "device_map", "what", first_per_label=True,
                                      only=lambda e: not e.get("library"))
    summary.unmappable = _located(trace, "device_unmappable", "what")
    summary.probe_errors = sorted({str(e.get("where") or "start-up") for _, e in trace.events("probe_error")})
    summary.loss_curve, summary.top_grad_layers = _story(trace)
    failed = [w for w in launched.workers if w.outcome.get("status") == "crashed" or w.returncode not in (0, None)]
    if launched.interrupted:
        summary.status = "interrupted"
    elif launched.timed_out:
        summary.status = "timeout"
        summary.error = f"The run did not finish within --timeout {options.timeout:g} s and was stopped."
        if not getattr(launched, "script_started", True):
            summary.error = (
                f"The run hit --timeout {options.timeout:g} s before the script's first line ran: starting "
                "Python and convcheck's probe took all of it (a busy or slow machine). Nothing of the script "
                "was run; give a longer --timeout."
            )
        summary.hung_at = _hang_locations(launched.stacks, options.script)
    elif failed:
        first = _first_failure(failed)
        summary.status = "crashed"
        summary.error = _failure_text(first, options)
        others = [w for w in failed if w is not first]
        if others and options.nproc_per_node is not None:
            after = ", ".join(f"rank {w.rank}" for w in others)
            summary.error += f"\n(rank {first.rank} failed first; {after} failed after it, when it lost its peer.)"
    elif total_steps == 0:
        summary.status = "no-training-step"
        summary.error = _no_step_text(launched, trace)
    else:
        statuses = {w.outcome.get("status") for w in launched.workers}
        summary.status = "stopped-at-budget" if "stopped-at-budget" in statuses else "completed"
    return summary


def _skipped_steps(proc) -> int:  # noqa: ANN001
    """Steps of this process that a GradScaler skipped because of inf/NaN gradients."""
    if proc is None:
        return 0
    return sum(1 for e in proc.of("scaler") if e.get("call") == "step" and e.get("skipped"))


def _located(trace, kind: str, label: str, first_per_label: bool = False, only=None) -> list[dict]:  # noqa: ANN001
    """One row per event of this kind: its label and the user's file and line, repeats left out.

    With ``first_per_label`` only the first place each label was seen counts.
    """
    rows: dict[tuple, dict] = {}
    for _, event in trace.events(kind):
        if only is not None and not only(event):
            continue
        file, line = (event.get("loc") or [None, None])[:2]
        key = (event.get(label),) if first_per_label else (event.get(label), file, line)
        rows.setdefault(key, {label: event.get(label), "file": file, "line": line})
    return list(rows.values())


def _story(trace) -> tuple[list[float], list[dict]]:  # noqa: ANN001
    """The first trainer's loss per step and its largest gradient norms at the last sampled step."""
    trainers = trace.trainers
    if not trainers:
        return [], []
    proc = trainers[0]
    # Not the forward that met the step budget: its step never ran.
    # With no step taken there is no curve: a loss per backward pass is not a loss per step.
    curve = [round(loss, 6) for step, loss in proc.losses_per_step().items() if step <= proc.steps]
    names = proc.param_names()
    sampled = [e for e in proc.of("step") if "grad_norms" in e]
    top = []
    if sampled:
        last = sampled[-1]
        pairs = sorted(zip(last["grad"], last["grad_norms"]), key=lambda p: -p[1] if p[1] == p[1] else 0)
        top = [{"name": names.get(pid, f"param{pid}"), "norm": norm, "step": last["n"]} for pid, norm in pairs[:3]]
    return curve, top


def _no_step_text(launched, trace) -> str:  # noqa: ANN001
    """Why no step was seen: what the script asked for and what it printed last."""
    backwards = sum(1 for _ in trace.events("backward"))
    text = ("No training step observed: the script ran to its end without calling optimizer.step() "
            "(or scaler.step()). convcheck needs at least one step to check training.")
    if backwards:
        passes = "pass" if backwards == 1 else "passes"
        text += (f" It ran {backwards} backward() {passes}, so it may update the parameters by hand: only the "
                 "checks that read the loss graph could judge it.")
    asked = [e for _, e in trace.events("accelerator_query")]
    if asked:
        loc = asked[0].get("loc") or [None, None]
        at = f" at {display_loc(loc)}" if loc[0] else ""
        text += (f" The script asked {asked[0].get('what')}(){at} and was told no GPU is available: run with "
                 "--pretend-cuda (and --cuda-devices N) to have it take its GPU path on the CPU.")
    tail = next((w.stdout_tail.strip() or w.stderr_tail.strip() for w in launched.workers
                 if (w.stdout_tail or w.stderr_tail).strip()), "")
    if tail:
        text += "\nThe script's last output:\n" + "\n".join(tail.splitlines()[-8:])
    return text


_SELF_EXPLAINED = ("SelfSpawnUnderNproc:",)


#: What a DDP rank says when another rank died under it: a consequence, not the cause.
_PEER_LOSS = ("connection reset by peer", "connection closed by peer", "broken pipe", "connection refused",
              "socket closed", "read error", "timed out", "gloo")


def _first_failure(failed: list):  # noqa: ANN001, ANN202
    """The worker that failed first and on its own; its peers fail after it when it drops out."""

    def order(worker) -> tuple:  # noqa: ANN001
        text = f"{worker.outcome.get('error') or ''} {worker.stderr_tail[-600:]}".lower()
        peer_loss = bool(worker.outcome.get("error")) and any(word in text for word in _PEER_LOSS)
        seen = worker.exited_at if worker.exited_at is not None else float("inf")
        return (peer_loss, seen, worker.outcome.get("time", float("inf")), worker.index)

    return min(failed, key=order)


def _failure_text(worker, options: RunOptions) -> str:  # noqa: ANN001
    who = f"rank {worker.rank}" if options.nproc_per_node is not None else "the script"
    outcome = worker.outcome
    tail = outcome.get("traceback") or worker.stderr_tail
    tail = "\n".join(tail.strip().splitlines()[-15:])
    if str(outcome.get("error") or "").startswith(_SELF_EXPLAINED):
        return f"{who} stopped: {outcome['error'].split(': ', 1)[1]}"  # convcheck's own message says it all
    if outcome.get("error"):
        head = f"{who} failed: {outcome['error']}"
    elif worker.returncode is not None and worker.returncode < 0:
        head = f"{who} was killed by signal {-worker.returncode}"
    else:
        head = f"{who} exited with code {worker.returncode}"
    return f"{head}\n{tail}" if tail else head


def _hang_locations(stacks: dict[int, str], script: Path) -> list[str]:
    """For each hung process, the innermost frame in the user's script, from its stack dump."""
    found = []
    name = script.name
    for pid, text in sorted(stacks.items()):
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("File ") and name in line:
                found.append(f"pid {pid}: {line}")
                break
    return found


def exit_code_for(report: Report, fail_on: str) -> ExitCode:
    """Map the run's outcome and findings to the documented exit code."""
    status = report.run.status
    steps = sum(p.steps for p in report.run.processes)
    if status == "interrupted":
        return ExitCode.INTERRUPTED
    if status == "timeout":
        return ExitCode.TIMEOUT
    if status == "crashed":
        return ExitCode.CRASHED if steps else ExitCode.CANNOT_RUN
    if status == "no-training-step":
        return ExitCode.NO_TRAINING_STEP
    if fail_on != "never" and report.at_or_above(Severity(fail_on)):
        return ExitCode.FINDINGS
    return ExitCode.OK


def write_report(report: Report, fmt: str, path: Path | None, ctx: RenderContext) -> None:
    """Render the report in one format to stdout, a file, or a device or pipe (never truncated)."""
    from convcheck.report import render
    from convcheck.report.destination import write_text

    if path is None and fmt == "text":
        from convcheck.report.text import print_report

        print_report(report)
        return
    write_text(path, render(report, fmt, ctx))


def _error(message: str) -> None:
    sys.stderr.write(f"convcheck: {message}\n")
