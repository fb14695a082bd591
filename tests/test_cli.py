"""The command line itself: bad input, exit codes, start-up, packaging."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cc_testing import REPO, SCRIPTS, convcheck

from convcheck.exitcodes import ExitCode


def test_missing_script() -> None:
    result = convcheck("run", "no/such/train.py")
    assert result.code == ExitCode.CANNOT_RUN
    assert result.stderr == "convcheck: no/such/train.py: no such file. Give the path of a Python training script.\n"
    assert result.stdout == ""


def test_folder_instead_of_script(tmp_path: Path) -> None:
    result = convcheck("run", tmp_path)
    assert result.code == ExitCode.CANNOT_RUN
    assert "is a folder" in result.stderr and "Traceback" not in result.stderr


def test_binary_file_is_not_python(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"PK\x03\x04\x00\x00binary")
    result = convcheck("run", weights)
    assert result.code == ExitCode.CANNOT_RUN
    assert result.stderr == f"convcheck: {weights} is not a Python file (it contains binary data). Give a training script.\n"


def test_text_that_is_not_python(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("train the model for ten epochs\n")
    result = convcheck("run", notes)
    assert result.code == ExitCode.CANNOT_RUN
    assert result.stderr.startswith(f"convcheck: {notes}:1:")
    assert "It does not look like a Python file. Nothing was run." in result.stderr


def test_syntax_error_is_located_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "broken.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\nfor x in range(3)\n    pass\n")
    result = convcheck("run", script)
    assert result.code == ExitCode.CANNOT_RUN
    assert result.stderr.startswith(f"convcheck: {script}:2:")
    assert "SyntaxError: expected ':'" in result.stderr and "Nothing was run." in result.stderr
    assert not marker.exists()


def test_unknown_check_in_select() -> None:
    result = convcheck("run", "--select", "CC999", SCRIPTS / "single.py")
    assert result.code == ExitCode.CANNOT_RUN
    assert result.stderr.startswith("convcheck: Unknown check 'CC999'. Known checks:")


def test_trace_dir_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    result = convcheck("run", "--trace-dir", tmp_path, SCRIPTS / "single.py")
    assert result.code == ExitCode.CANNOT_RUN
    assert "is not empty" in result.stderr
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_bad_option_value_is_a_usage_error() -> None:
    result = convcheck("run", "--steps", "zero", SCRIPTS / "single.py")
    assert result.code == ExitCode.CANNOT_RUN
    assert result.stderr == (
        "convcheck: invalid value for '--steps': must be a whole number\n"
        "Usage: convcheck run [OPTIONS] SCRIPT [SCRIPT_ARGS]...\n"
        "Try 'convcheck run -h' for help.\n"
    )


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``convcheck ARGS`` in this process: exit code, stdout, stderr."""
    from convcheck.cli import app
    from convcheck.cliparse import invoke

    code = invoke(app, list(args), prog_name="convcheck")
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--stpes", "4", "x.py"], "unknown option --stpes (did you mean --steps?)"),
        (["run", "--nproc-per-nod=2", "x.py"], "unknown option --nproc-per-nod (did you mean --nproc-per-node?)"),
        (["run", "--zzz", "x.py"], "unknown option --zzz"),
        (["config", "--fromat", "json"], "unknown option --fromat (did you mean --format?)"),
        (["run", "--steps", "0", "x.py"], "invalid value for '--steps': must be at least 1 (got 0)"),
        (["run", "--nproc-per-node", "65", "x.py"], "invalid value for '--nproc-per-node': must be between 1 and 64 (got 65)"),
        (["run", "--format", "xml", "x.py"],
         "invalid value for '--format': 'xml' is not one of 'text', 'json', 'sarif', 'junit', 'github'."),
        (["run", "--timeout", "soon", "x.py"], "invalid value for '--timeout': must be a number"),
    ],
)
def test_usage_errors_say_what_is_wrong(capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    code, out, err = _cli(capsys, *args)
    assert code == ExitCode.CANNOT_RUN
    first, usage, hint = err.splitlines()
    assert first == f"convcheck: {message}"
    assert usage.startswith(f"Usage: convcheck {args[0]} [OPTIONS]") and hint == f"Try 'convcheck {args[0]} -h' for help."
    assert out == ""


def test_unknown_option_of_the_worker(capsys: pytest.CaptureFixture) -> None:
    from convcheck.cliparse import invoke
    from convcheck.worker import app as worker_app

    code = invoke(worker_app, ["--stpes", "3", "train.py"], prog_name="python -m convcheck.worker")
    assert code == ExitCode.CANNOT_RUN
    assert capsys.readouterr().err.splitlines()[0] == "convcheck: unknown option --stpes (did you mean --steps?)"


def test_dash_h_and_version(capsys: pytest.CaptureFixture) -> None:
    from convcheck import __version__

    for command in ([], ["run"], ["report"], ["config"], ["fix-state-dict"], ["explain"]):
        code, short, _ = _cli(capsys, *command, "-h")
        code_long, long, _ = _cli(capsys, *command, "--help")
        assert code == code_long == 0 and short == long and short.startswith("Usage: convcheck")
    assert _cli(capsys, "--version") == (0, f"convcheck {__version__}\n", "")


def test_help_text_is_plain(capsys: pytest.CaptureFixture) -> None:
    import re

    from convcheck.cli import app
    from convcheck.worker import app as worker_app

    texts = [_cli(capsys, *command, "-h")[1] for command in
             ([], ["run"], ["report"], ["config"], ["rules"], ["explain"], ["fix-state-dict"], ["schema"])]
    from convcheck.cliparse import invoke

    assert invoke(worker_app, ["-h"], prog_name="python -m convcheck.worker") == 0
    texts.append(capsys.readouterr().out)
    assert app is not None
    for text in texts:
        assert not re.search(r"<[a-z][^>]*>|\{|\}|``|\[default|\[required\]|x>=|x<=|Value error|Input should", text), text
        assert all(line == line.rstrip() for line in text.splitlines())
    run_help = texts[1]
    assert run_help.startswith("Usage: convcheck run [OPTIONS] SCRIPT [SCRIPT_ARGS]...\n")
    assert "  --steps N " in run_help and "(default: 20)" in " ".join(run_help.split())
    assert "  --show-output " in run_help and "--no-show-output" not in run_help


def test_output_file_and_json_report(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "report.json"
    result = convcheck("run", "--ignore", "CC002", "--steps", "2", "--format", "json", "--output", out, SCRIPTS / "endless.py")
    assert result.code == ExitCode.OK, result.stderr
    assert result.stdout == ""
    import json

    report = json.loads(out.read_text())
    assert report["version"] == 1
    assert report["script"] == str(SCRIPTS / "endless.py")
    assert set(report) == {"version", "script", "findings", "run"}


def test_help_lists_exit_codes() -> None:
    result = convcheck("run", "--help")
    assert result.code == 0
    text = " ".join(result.stdout.split())
    for code in ExitCode:
        assert f"{int(code)} " in text
    assert "stopped at --timeout" in text


def test_cli_does_not_import_torch() -> None:
    code = "import sys, convcheck.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_python_dash_m_and_console_script_agree() -> None:
    import shutil

    exe = shutil.which("convcheck")
    assert exe is not None
    a = subprocess.run([exe, "--help"], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "convcheck", "--help"], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert "fix-state-dict" in a.stdout and "run" in a.stdout


@pytest.mark.slow
def test_wheel_contains_checks_and_no_top_level_checks(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("convcheck-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "convcheck/checks/__init__.py" in names
    assert "convcheck/runtime/site/sitecustomize.py" in names
    assert not [n for n in names if n.startswith("checks/")]
    assert not [n for n in names if n.startswith(("tests/", "examples/"))]
    # Every package of the source tree is in the wheel (a package left out of pyproject's list is not).
    packages = sorted(init.relative_to(REPO).as_posix() for init in (REPO / "convcheck").rglob("__init__.py"))
    assert [p for p in packages if p not in names] == []
