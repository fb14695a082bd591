"""The CI gate: configuration, suppressions, baselines, --static-only, rules and explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cc_testing import convcheck

from convcheck.config import ConfigError, load_config
from convcheck.findings import Finding, Location, Severity
from convcheck.suppress import apply_suppressions

TRAIN = """\
import torch
w = torch.zeros(2, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
for _ in range(3):
    opt.zero_grad()
    w.sum().backward()
    opt.step()
"""


def _finding(path: Path, line: int, code: str = "CC004") -> Finding:
    return Finding(code=code, name="x", severity=Severity.ERROR, message="m", location=Location(path=str(path), line=line))


# -- configuration ---------------------------------------------------------------------


def test_config_from_nearest_pyproject_with_a_convcheck_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.convcheck]\nsteps = 7\nfail-on = "warning"\nselect = ["CC004"]\n')
    nested = tmp_path / "pkg" / "sub"
    nested.mkdir(parents=True)
    (tmp_path / "pkg" / "pyproject.toml").write_text("[project]\nname = 'x'\n")  # no table: keep looking up
    config = load_config(nested)
    assert config.source == str(tmp_path / "pyproject.toml")
    assert (config.settings.steps, config.settings.fail_on, config.settings.select) == (7, "warning", ["CC004"])


def test_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.convcheck]\nstep = 7\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert "unknown key 'step'" in str(err.value) and "steps" in str(err.value)
    (tmp_path / "train.py").write_text(TRAIN)
    result = convcheck("run", tmp_path / "train.py")
    assert result.code == 2
    assert result.stderr.startswith(f"convcheck: {tmp_path / 'pyproject.toml'}: [tool.convcheck] is invalid: unknown key")


def test_bad_value_and_bad_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.convcheck]\nfail-on = "sometimes"\n')
    with pytest.raises(ConfigError, match="fail-on"):
        load_config(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.convcheck\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)


def test_flags_override_the_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.convcheck]\nsteps = 2\n")
    (tmp_path / "train.py").write_text(TRAIN.replace("range(3)", "range(100)"))
    from_file = convcheck("run", "--ignore", "CC002", "--format", "json", tmp_path / "train.py")
    assert from_file.code == 0, from_file.stderr
    assert from_file.report["run"]["steps_budget"] == 2
    assert from_file.report["run"]["processes"][0]["steps"] == 2
    from_flag = convcheck("run", "--ignore", "CC002", "--steps", "4", "--format", "json", tmp_path / "train.py")
    assert from_flag.report["run"]["processes"][0]["steps"] == 4


def test_config_command_prints_effective_settings_and_their_origin(tmp_path: Path) -> None:
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.convcheck]\ntimeout = 60\n[tool.convcheck.per-file-ignores]\n"legacy/*.py" = ["CC002"]\n')
    as_json = convcheck("config", "--format", "json", tmp_path)
    assert as_json.code == 0, as_json.stderr
    data = json.loads(as_json.stdout)  # nothing but JSON
    assert data["source"] == str(config)
    settings, origin = data["settings"], data["origin"]
    assert settings["timeout"] == 60 and settings["per-file-ignores"] == {"legacy/*.py": ["CC002"]}
    assert settings["steps"] == 20
    assert origin["timeout"] == origin["per-file-ignores"] == str(config)
    assert origin["steps"] == origin["fail-on"] == "default"
    text = convcheck("config", tmp_path)
    assert text.code == 0
    lines = text.stdout.splitlines()
    assert lines[0] == f"[tool.convcheck] from {config}"
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["timeout"] == ["timeout", "60.0", str(config)]
    assert rows["steps"] == ["steps", "20", "default"]
    assert rows["nproc-per-node"] == ["nproc-per-node", "not", "set", "default"]
    assert set(rows) == set(settings)


def test_config_errors_in_plain_words(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.convcheck]\nfail-on = "sometimes"\nsteps = 0\n')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'pyproject.toml'}: [tool.convcheck] is invalid: fail-on must be 'error', 'warning', 'info' or "
        "'never' (got 'sometimes'); steps must be at least 1 (got 0)."
    )


# -- suppressions -------------------------------------------------------------------------


def test_inline_suppression_on_the_line_and_on_the_statement(tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text(
        "x = 1  # convcheck: ignore[CC004]\n"
        "loader = make(  # convcheck: ignore[cc004]\n"
        "    data,\n"
        ")\n"
        "y = 2\n"
    )
    kept = apply_suppressions([_finding(script, 1), _finding(script, 3), _finding(script, 5)])
    assert [(f.code, f.location.line) for f in kept] == [("CC004", 5)]


def test_suppressions_accept_names() -> None:
    from convcheck.suppress import _normalize

    assert _normalize("unused-suppression") == "CC100"
    assert _normalize(" cc004 ") == "CC004"


def test_suppression_of_another_code_does_not_apply_and_is_reported_unused(tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text("x = 1  # convcheck: ignore[CC002]\n")
    kept = apply_suppressions([_finding(script, 1)])
    assert [(f.code, f.severity, f.location.line) for f in kept] == [
        ("CC004", Severity.ERROR, 1), ("CC100", Severity.INFO, 1)
    ]
    assert kept[1].message == (
        "This '# convcheck: ignore' suppresses nothing: no finding of CC002 was reported here."
    )


def test_file_level_suppression(tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text("# convcheck: ignore-file[CC002, CC004]\nx = 1\ny = 2\n")
    kept = apply_suppressions([_finding(script, 2), _finding(script, 3, "CC002"), _finding(script, 3, "CC005")])
    assert [(f.code, f.location.line) for f in kept] == [("CC005", 3)]


def test_per_file_ignores_from_config(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy" / "old.py"
    legacy.parent.mkdir()
    legacy.write_text("x = 1\n")
    kept = apply_suppressions(
        [_finding(legacy, 1), _finding(legacy, 1, "CC005")], {"legacy/*.py": ["CC004"]}, tmp_path
    )
    assert [f.code for f in kept] == ["CC005"]


def test_unused_suppression_end_to_end_and_static_only_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    script = tmp_path / "train.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + TRAIN + "x = 1  # convcheck: ignore[CC004]\n")
    result = convcheck("run", "--static-only", "--fail-on", "info", "--format", "json", script)
    assert not marker.exists()
    assert result.code == 1, result.stderr
    assert result.report["run"]["status"] == "static-only"
    assert [(f["code"], f["location"]["line"]) for f in result.report["findings"]] == [("CC100", 9)]


# -- baselines -----------------------------------------------------------------------------


def test_baseline_round_trip(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN + "x = 1  # convcheck: ignore[CC004]\n")
    baseline = tmp_path / "baseline.json"
    written = convcheck("run", "--static-only", "--fail-on", "info", "--write-baseline", baseline, script)
    assert written.code == 0, written.stderr
    assert [e["code"] for e in json.loads(baseline.read_text())["findings"]] == ["CC100"]
    # The same findings, moved down a line: still known.
    script.write_text("# a comment\n" + TRAIN + "x = 1  # convcheck: ignore[CC004]\n")
    clean = convcheck("run", "--static-only", "--fail-on", "info", "--baseline", baseline, "--format", "json", script)
    assert clean.code == 0, clean.stdout
    assert clean.report["findings"] == [] and clean.report["run"]["baseline_suppressed"] == 1
    # A new finding fails the gate.
    script.write_text("# a comment\n" + TRAIN + "x = 1  # convcheck: ignore[CC004]\ny = 2  # convcheck: ignore[CC005]\n")
    new = convcheck("run", "--static-only", "--fail-on", "info", "--baseline", baseline, "--format", "json", script)
    assert new.code == 1
    assert [(f["code"], f["location"]["line"]) for f in new.report["findings"]] == [("CC100", 10)]


def test_missing_baseline_is_bad_input(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    result = convcheck("run", "--static-only", "--baseline", tmp_path / "nope.json", script)
    assert result.code == 2
    assert "no such file. Create it with --write-baseline." in result.stderr


# -- several formats, rules, explain ---------------------------------------------------------


def test_several_formats_into_one_folder(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN + "x = 1  # convcheck: ignore[CC004]\n")
    out = tmp_path / "reports"
    result = convcheck(
        "run", "--static-only", "--format", "sarif", "--format", "junit", "--format", "json", "--output", out, script
    )
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["convcheck.json", "convcheck.sarif", "convcheck.xml"]
    assert json.loads((out / "convcheck.sarif").read_text())["version"] == "2.1.0"


def test_every_format_gets_its_own_file_in_a_folder(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN + "x = 1  # convcheck: ignore[CC004]\n")
    out = tmp_path / "reports"
    result = convcheck("run", "--static-only", "--format", "text", "--format", "github", "--output", out, script)
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["convcheck.github.txt", "convcheck.txt"]
    text = " ".join((out / "convcheck.txt").read_text().split())
    assert text.startswith(f"convcheck {script} · static checks only")
    assert (out / "convcheck.github.txt").read_text().startswith("::notice file=")


@pytest.mark.parametrize(
    "outputs",
    [["a.json", "a.json"], ["a.json", "sub/../a.json"], ["-", "/dev/stdout"], ["-", "-"]],
    ids=["same-name", "same-file", "stdout-twice", "dash-twice"],
)
def test_two_reports_to_one_file_are_refused(tmp_path: Path, outputs: list[str]) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    (tmp_path / "sub").mkdir()
    args = [arg for path in outputs for arg in ("--output", path)]
    result = convcheck("run", "--static-only", "--format", "json", "--format", "sarif", *args, script, cwd=tmp_path)
    assert result.code == 2
    assert result.stderr == (
        f"convcheck: --output: the json and sarif reports would both be written to {outputs[1]}, and one would "
        "replace or garble the other. Give each format its own file, or one folder for all.\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "train.py"]


def test_dash_is_stdout(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    result = convcheck("run", "--static-only", "--format", "json", "--output", "-", script, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert result.report["run"]["status"] == "static-only"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.py"]


def test_output_to_dev_stdout_truncates_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(TRAIN + "x = 1  # convcheck: ignore[CC004]\n")
    log = tmp_path / "ci.log"
    # The README's CI example: the job's log is a file the shell redirected standard output to.
    command = (f"{{ echo BEFORE; {sys.executable} -m convcheck run --static-only --format github --output /dev/stdout "
               f"{script}; echo AFTER; }} > {log}")
    subprocess.run(["bash", "-c", command], check=True)
    lines = log.read_text().splitlines()
    assert lines[0] == "BEFORE" and lines[-1] == "AFTER"
    assert len(lines) == 3 and lines[1].startswith("::notice file=") and "train.py,line=8,title=CC100" in lines[1]


def test_output_to_a_fifo_is_written_without_truncating(tmp_path: Path) -> None:
    import os
    import threading

    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    fifo = tmp_path / "reports.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = convcheck("run", "--static-only", "--format", "json", "--output", fifo, script)
    reader.join(timeout=60)
    assert result.code == 0, result.stderr
    assert json.loads(received[0])["run"]["status"] == "static-only"
    assert fifo.is_fifo()


def test_several_formats_without_output_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    result = convcheck("run", "--static-only", "--format", "sarif", "--format", "json", script)
    assert result.code == 2 and "Several formats need --output" in result.stderr


def test_output_never_overwrites_the_script(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    result = convcheck("run", "--static-only", "--output", script, script)
    assert result.code == 2 and "convcheck never overwrites your files" in result.stderr
    assert script.read_text() == TRAIN


def _in_process(capsys: pytest.CaptureFixture, *args: str):  # noqa: ANN202
    """``convcheck ARGS`` in this process (no script runs): a Result like the subprocess helper's."""
    from cc_testing import Result

    from convcheck.cli import app
    from convcheck.cliparse import invoke

    code = invoke(app, list(args), prog_name="convcheck")
    out, err = capsys.readouterr()
    return Result(code, out, err)


def test_rules_lists_every_check(capsys: pytest.CaptureFixture) -> None:
    from convcheck.catalog import all_checks

    result = _in_process(capsys, "rules")
    assert result.code == 0
    for check in all_checks():
        assert check.code in result.stdout and check.name in result.stdout


def test_explain_by_code_and_name_and_unknown(capsys: pytest.CaptureFixture) -> None:
    by_code = _in_process(capsys, "explain", "cc100")
    by_name = _in_process(capsys, "explain", "unused-suppression")
    assert by_code.code == by_name.code == 0
    assert by_code.stdout == by_name.stdout
    assert "CC100 unused-suppression (info)" in by_code.stdout and "Why is this bad?" in by_code.stdout
    unknown = _in_process(capsys, "explain", "CC999")
    assert unknown.code == 2 and "unknown check 'CC999'" in unknown.stderr


def test_static_only_reads_every_file_given(tmp_path: Path) -> None:
    first, second = tmp_path / "a.py", tmp_path / "b.py"
    first.write_text("x = 1  # convcheck: ignore[CC004]\n")
    second.write_text("y = 2\nz = 3  # convcheck: ignore[CC005]\n")
    result = convcheck("run", "--static-only", "--fail-on", "info", "--format", "json", first, second)
    assert result.code == 1
    assert [(Path(f["location"]["path"]).name, f["location"]["line"]) for f in result.report["findings"]] == [
        ("a.py", 1), ("b.py", 2)
    ]
