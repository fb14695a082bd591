"""Bugs that show only after the first epoch: long epochs of a training loop are shortened without being
asked, and what the script's own helpers do counts where they are called."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cc_testing import REPO, SCRIPTS, convcheck, read_traces

from convcheck.static.calls import Calls, Where
from convcheck.static.context import load_script

# Whole runs of convcheck past several epoch boundaries: `python -m pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow


def _line(script: str, text: str) -> int:
    """The line of ``script`` that holds ``text`` (once)."""
    [number] = [n for n, line in enumerate((SCRIPTS / script).read_text().splitlines(), 1) if text in line]
    return number


def _run(*args: str | Path) -> dict:
    # From the repository's folder: the scripts' paths (and the reports' paths) are relative to it.
    result = convcheck("run", "--format", "json", "--fail-on", "never", *args, cwd=REPO)
    assert result.code == 0, result.stdout + result.stderr
    return result.report


def _epochs(traces: Path) -> list[tuple[int, int, int, bool]]:
    [events] = [t for t in read_traces(traces) if any(e["ev"] == "step" for e in t)]
    return [(e["loader"], e["epoch"], e["batches"], e["complete"]) for e in events if e["ev"] == "loader_epoch"]


# -- shape (a): validation in a helper leaves the model in eval mode -----------------------------


def test_eval_helper_beyond_the_first_epoch_is_an_error_at_the_helper_line() -> None:
    report = _run("tests/scripts/cc009_eval_helper.py")
    [finding] = [f for f in report["findings"] if f["code"] == "CC009"]
    eval_line = _line("cc009_eval_helper.py", "model.eval()")
    call_line = _line("cc009_eval_helper.py", "evaluate(model, val)")
    assert finding["severity"] == "error"
    assert finding["location"]["line"] == eval_line
    assert (f"`Sequential.eval()` at tests/scripts/cc009_eval_helper.py:{eval_line} (step 6) in `evaluate()`, called at line "
            f"{call_line}, and not back to train mode") in finding["message"]
    assert "14 of 20 optimizer steps (from step 7)" in finding["message"]


def test_eval_helper_with_train_at_each_epoch_is_quiet_past_the_epoch_boundaries() -> None:
    report = _run("tests/scripts/cc009_eval_helper_fixed.py")
    assert report["findings"] == []
    assert report["run"]["processes"][0]["steps"] == 20
    assert [row["batches"] for row in report["run"]["epochs"]["loaders"]] == [6]


@pytest.mark.parametrize("mode", ["full", "static"])
def test_eval_helper_the_run_does_not_reach_is_found_in_the_source(mode: str) -> None:
    # With full epochs the first validation lies beyond 20 steps: the source shows it, through both helpers.
    args = ["--max-batches-per-epoch", "0"] if mode == "full" else ["--static-only"]
    report = _run(*args, "tests/scripts/cc009_eval_helper.py")
    [finding] = report["findings"]
    eval_line = _line("cc009_eval_helper.py", "model.eval()")
    call_line = _line("cc009_eval_helper.py", "evaluate(model, val)")
    train_line = _line("cc009_eval_helper.py", "train_one_epoch(model, train, opt)")
    backward_line = _line("cc009_eval_helper.py", ".backward()")
    assert (finding["code"], finding["location"]["line"]) == ("CC009", eval_line)
    assert finding["message"].startswith(
        f"`model.eval()` (line {eval_line} in `evaluate()`, called at line {call_line}) runs in the loop at line "
        f"{train_line - 1} that also trains (`backward()` at line {backward_line} in `train_one_epoch()`, called at "
        f"line {train_line}), and nothing in that loop switches back with `train()`")
    if mode == "full":
        assert finding["severity"] == "warning"
        assert finding["message"].endswith("The model has BatchNorm1d, Dropout layers; the run ended after 20 "
                                           "optimizer steps, before this line ran.")
    else:
        assert finding["severity"] == "info"
    # The twin whose training helper calls model.train() first is quiet the same way.
    assert _run(*args, "tests/scripts/cc009_eval_helper_fixed.py")["findings"] == []


# -- shape (b): a helper unfreezes the backbone after a filtered optimizer was built -------------


@pytest.mark.parametrize("epochs", ["auto", "full"])
def test_unfreeze_helper_after_filtered_optimizer_is_an_error_naming_the_helper_line(epochs: str) -> None:
    # Shortened epochs reach the unfreeze at epoch 2 in the run; with full epochs only the source shows it.
    args = ["--max-batches-per-epoch", "0"] if epochs == "full" else []
    report = _run(*args, SCRIPTS / "cc006_unfreeze_helper.py")
    [finding] = [f for f in report["findings"] if f["code"] == "CC006"]
    unfreeze_line = _line("cc006_unfreeze_helper.py", "p.requires_grad = True")
    call_line = _line("cc006_unfreeze_helper.py", "unfreeze(model, opt)")
    assert finding["severity"] == "error"
    assert finding["location"]["line"] == _line("cc006_unfreeze_helper.py", "opt = torch.optim.SGD(")
    assert f"line {unfreeze_line} in `unfreeze()`, called at line {call_line}" in finding["message"]
    if epochs == "auto":
        assert finding["message"].startswith("2 trainable parameters of module `backbone` are in no optimizer")
    else:
        assert finding["source"] == "static+runtime"
        assert finding["evidence"]["unfreeze_calls"] == [{"helper": "unfreeze", "line": call_line}]


@pytest.mark.parametrize("epochs", ["auto", "full"])
def test_unfreeze_helper_that_adds_the_parameter_group_is_quiet(epochs: str) -> None:
    args = ["--max-batches-per-epoch", "0"] if epochs == "full" else []
    report = _run(*args, SCRIPTS / "cc006_unfreeze_helper_fixed.py")
    assert report["findings"] == []
    # Quiet after the run went through the unfreeze at epoch 2 (auto), or with full epochs.
    assert report["run"]["epochs"]["mode"] == ("off" if epochs == "full" else "auto")
    assert [row["batches"] for row in report["run"]["epochs"]["loaders"]] == ([] if epochs == "full" else [6])


# -- the report, and the opt-out ---------------------------------------------------------------


def test_report_says_epochs_were_shortened(tmp_path: Path) -> None:
    report = _run("--trace-dir", tmp_path / "t", SCRIPTS / "epoch_shapes.py", "epochs")
    loop = _line("epoch_shapes.py", "for x, y in batches(train)")
    validation = _line("epoch_shapes.py", "for x, y in val:")
    script = str(SCRIPTS / "epoch_shapes.py")
    assert report["run"]["epochs"] == {
        "mode": "auto", "steps_per_epoch": 6, "batches": None,
        "loaders": [{"loader": 0, "batches": 6, "full_batches": 50, "file": script, "line": loop,
                     "validation": False},
                    {"loader": 1, "batches": 6, "full_batches": 20, "file": script, "line": validation,
                     "validation": True}],
    }
    # The first three passes end after 6 steps, and the validation passes (no step, no_grad) after as many
    # batches; the fourth training pass would run in full, and the budget ends it.
    assert _epochs(tmp_path / "t") == [(0, 1, 6, False), (1, 1, 6, False), (0, 2, 6, False), (1, 2, 6, False),
                                       (0, 3, 6, False), (1, 3, 6, False), (0, 4, 3, False)]
    text = convcheck("run", "--fail-on", "never", "epoch_shapes.py", "epochs", cwd=SCRIPTS)
    assert text.code == 0, text.stderr
    assert ("Epochs shortened to 6 of 50 batches (loop at epoch_shapes.py:"
            f"{loop}), 6 of 20 batches (validation loop at epoch_shapes.py:{validation}) to reach epoch boundaries "
            "within 20 steps; `--max-batches-per-epoch 0` runs full epochs.") in " ".join(text.stdout.split())


def test_validation_with_gradients_on_runs_in_full(tmp_path: Path) -> None:
    report = _run("--trace-dir", tmp_path / "t", SCRIPTS / "epoch_shapes.py", "val-with-grad")
    assert [r["validation"] for r in report["run"]["epochs"]["loaders"]] == [False]
    assert [e for e in _epochs(tmp_path / "t") if e[0] == 1][:3] == [(1, 1, 21, True), (1, 2, 21, True),
                                                                     (1, 3, 21, True)]


def test_opt_out_runs_full_epochs(tmp_path: Path) -> None:
    report = _run("--max-batches-per-epoch", "0", "--trace-dir", tmp_path / "t", SCRIPTS / "epoch_shapes.py",
                  "epochs")
    assert report["run"]["epochs"] == {"mode": "off", "steps_per_epoch": None, "batches": None, "loaders": []}
    assert _epochs(tmp_path / "t") == [(0, 1, 21, False)]


@pytest.mark.parametrize("shape", ["single-pass", "next"])
def test_loops_that_would_end_or_fail_early_are_not_shortened(shape: str, tmp_path: Path) -> None:
    # One pass with no epoch loop would end the training; an explicit next() would get a StopIteration.
    report = _run("--trace-dir", tmp_path / "t", SCRIPTS / "epoch_shapes.py", shape)
    assert report["run"]["epochs"]["loaders"] == []
    assert report["run"]["status"] == "stopped-at-budget"
    assert _epochs(tmp_path / "t") == [(0, 1, 21, False)]


@pytest.mark.parametrize("shape", ["iterable", "wrapped"])
def test_loaders_without_length_and_wrapped_loops_are_shortened(shape: str, tmp_path: Path) -> None:
    report = _run("--trace-dir", tmp_path / "t", SCRIPTS / "epoch_shapes.py", shape)
    [row] = [r for r in report["run"]["epochs"]["loaders"] if not r["validation"]]
    assert row["batches"] == 6 and row["full_batches"] == (None if shape == "iterable" else 50)
    assert row["line"] == _line("epoch_shapes.py", "for batch in loader:" if shape == "wrapped" else
                                "for x, y in batches(train)")
    assert [e[:3] for e in _epochs(tmp_path / "t") if e[0] == 0] == [(0, 1, 6), (0, 2, 6), (0, 3, 6), (0, 4, 3)]


def test_accumulation_ends_a_shortened_epoch_on_a_step(tmp_path: Path) -> None:
    # Two batches per step: 6 steps are 12 batches, and no micro-batch is carried into the next epoch.
    report = _run("--trace-dir", tmp_path / "t", SCRIPTS / "epoch_shapes.py", "accumulate")
    assert [(r["batches"], r["full_batches"]) for r in report["run"]["epochs"]["loaders"]] == [(12, 50)]
    assert [e[:3] for e in _epochs(tmp_path / "t")][:3] == [(0, 1, 12), (0, 2, 12), (0, 3, 12)]
    assert not [f for f in report["findings"] if f["code"] in ("CC003", "CC008")]


def test_few_epochs_keep_their_last_epoch_whole(tmp_path: Path) -> None:
    # range(2): only the first epoch ends early, so the run still reaches its 20 steps.
    script = tmp_path / "two_epochs.py"
    script.write_text((SCRIPTS / "epoch_shapes.py").read_text().replace("range(4)", "range(2)"))
    report = _run("--trace-dir", tmp_path / "t", script, "epochs")
    assert report["run"]["processes"][0]["steps"] == 20
    assert [e[:3] for e in _epochs(tmp_path / "t") if e[0] == 0] == [(0, 1, 6), (0, 2, 15)]


# -- the static pass follows calls into the script's helpers ---------------------------------


def _calls(tmp_path: Path, source: str) -> tuple[Calls, ast.Module]:
    path = tmp_path / "train.py"
    path.write_text(source)
    ctx = load_script(path)
    return Calls(ctx), ctx.tree


def _node(tree: ast.Module, text: str) -> ast.AST:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.stmt) and ast.unparse(n).startswith(text))


def test_a_statement_in_a_helper_happens_at_each_call_two_levels_out(tmp_path: Path) -> None:
    calls, tree = _calls(tmp_path, (
        "def unfreeze(m):\n"                 # 1
        "    m.requires_grad_(True)\n"       # 2
        "class Loop:\n"                      # 3
        "    def next_stage(self, m):\n"     # 4
        "        unfreeze(m)\n"              # 5
        "def main():\n"                      # 6
        "    loop = Loop()\n"                # 7
        "    for epoch in range(3):\n"       # 8
        "        loop.next_stage(model)\n"   # 9
        "main()\n"                           # 10
        "unfreeze(model)\n"                  # 11
    ))
    places = calls.places(_node(tree, "m.requires_grad_"))
    assert places == [Where(2, (("main", 10), ("next_stage", 9), ("unfreeze", 5))), Where(2, (("unfreeze", 11),))]
    assert places[0].describe() == "line 2 in `unfreeze()`, called at line 5"
    assert places[0].order == (10, 9, 5, 2)
    assert calls.places(_node(tree, "main()")) == [Where(10)]
    assert calls.at_line(2) == places


def test_the_repeat_run_of_cc002_cuts_its_epochs_where_the_main_run_does(tmp_path: Path) -> None:
    # 6 steps: epochs of 2 steps in the main run and in CC002's 5-step repeat alike (not 1 step, from its own
    # budget), so both runs draw the same shuffles and compare equal.
    report = _run("--steps", "6", "--trace-dir", tmp_path / "t", SCRIPTS / "cc009_eval_helper_fixed.py")
    assert report["findings"] == []
    assert report["run"]["epochs"]["steps_per_epoch"] == 2
    main = [e[:3] for e in _epochs(tmp_path / "t") if e[0] == 0]
    repeat = [e[:3] for e in _epochs(tmp_path / "t" / "variants" / "repeat") if e[0] == 0]
    assert main[:2] == repeat[:2] == [(0, 1, 2), (0, 2, 2)]


def test_worker_mode_shortens_epochs_the_same_way(tmp_path: Path) -> None:
    # `python -m convcheck.worker` (one rank per torchrun process) with no --max-batches-per-epoch.
    proc = subprocess.run(
        [sys.executable, "-m", "convcheck.worker", "--trace-dir", str(tmp_path / "t"), "--format", "json",
         "--fail-on", "never", str(SCRIPTS / "epoch_shapes.py"), "epochs"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    assert [(r["batches"], r["full_batches"]) for r in report["run"]["epochs"]["loaders"]] == [(6, 50), (6, 20)]
    assert "epoch 2 batches 6" in proc.stdout
