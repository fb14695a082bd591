"""Scripts written for Hugging Face Trainer, Lightning and accelerate, run unmodified on the CPU.

Each framework's example pair runs once (the runs are shared by the tests below); a framework that is
not installed skips its tests (``pip install -e ".[frameworks]"`` installs them all).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
from cc_testing import EXAMPLES, SCRIPTS, Result, convcheck, read_traces
from test_examples import parse_expectations

# Long end-to-end runs (HF Trainer, Lightning and accelerate runs): `python -m pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow

FRAMEWORKS = EXAMPLES / "frameworks"
_IMPORTS = {"transformers": "from transformers ", "lightning": "import lightning", "accelerate": "from accelerate "}


def _framework(script: Path) -> str:
    source = script.read_text()
    return next(name for name, needle in _IMPORTS.items() if needle in source)


def _require(script: Path) -> None:
    name = _framework(script)
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[frameworks]')")


@pytest.fixture(scope="module")
def run_example(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], tuple[Result, Path]]:
    """Run an example once with its declared options (and a kept trace); later calls reuse the run."""
    done: dict[Path, tuple[Result, Path]] = {}

    def run(script: Path) -> tuple[Result, Path]:
        _require(script)
        if script not in done:
            args, _ = parse_expectations(script)
            traces = tmp_path_factory.mktemp(script.stem) / "traces"
            result = convcheck("run", "--format", "json", "--fail-on", "never", "--trace-dir", traces, *args, script,
                               cwd=script.parent, timeout=300)
            done[script] = (result, traces)
        return done[script]

    return run


def _examples() -> list[Path]:
    return sorted(FRAMEWORKS.glob("*.py"))


def test_every_framework_has_a_buggy_example_and_its_fixed_twin() -> None:
    names = {p.stem for p in _examples()}
    assert {_framework(p) for p in _examples()} == set(_IMPORTS)
    assert all(f"{name}_fixed" in names for name in names if not name.endswith("_fixed"))


@pytest.mark.parametrize("example", _examples(), ids=lambda p: p.stem)
def test_example(example: Path, run_example: Callable[[Path], tuple[Result, Path]]) -> None:
    result, _ = run_example(example)
    assert result.code == 0, result.stderr + result.stdout[-3000:]
    run = result.report["run"]
    # Every example has more training than the budget: stopping there shows the framework kept going
    # (the HF Trainer's epochs are sized from len() of a loader shortened by --max-batches-per-epoch).
    assert run["status"] == "stopped-at-budget" and run["error"] is None
    # The frameworks' own CUDA calls on this CPU machine (Lightning's empty_cache) are no mapping of the user's.
    assert run["device_mapping"] == []
    _, expected = parse_expectations(example)
    findings = result.report["findings"]
    got = {(f["code"], f["severity"], f["location"]["line"] if f["location"] else None) for f in findings}
    if example.stem.endswith("_fixed"):
        assert [f for f in findings if f["severity"] in ("error", "warning")] == []
    else:
        assert expected and all(item in got for item in expected), sorted(got, key=str)


def test_hf_trainer_accumulation_factor_and_location(run_example: Callable[[Path], tuple[Result, Path]]) -> None:
    script = FRAMEWORKS / "hf_trainer_loss_divided.py"
    result, traces = run_example(script)
    (finding,) = result.findings("CC003")
    # Divided by the micro-batch of 8, not by the 4 accumulated micro-batches: 8 / 4 = 2x too small.
    assert finding["evidence"]["gradient_scale"] == 0.5 and finding["evidence"]["backwards_per_step"] == 4
    assert "each step's gradient is 2× too small" in finding["message"]
    assert "num_items_in_batch" in finding["fix"]
    # The Trainer calls backward(); the loss was made in compute_loss, at the model's call.
    backwards = [e for t in read_traces(traces) for e in t if e["ev"] == "backward"]
    assert {tuple(e["loc"]) for e in backwards} == {(str(script), 28)}


def test_hf_trainer_with_every_parameter_frozen_explains_the_crash() -> None:
    script = SCRIPTS / "frameworks" / "hf_all_frozen.py"
    _require(script)
    result = convcheck("run", "--steps", "3", "--select", "CC006", "--format", "json", script, timeout=300)
    assert result.code == 2, result.stderr + result.stdout[-3000:]
    assert "element 0 of tensors does not require grad" in result.report["run"]["error"]
    (finding,) = result.findings("CC006")
    assert (finding["severity"], finding["location"]["line"]) == ("error", 13)
    assert finding["message"].startswith(
        "Every parameter of `BertForSequenceClassification` (25 parameters) has requires_grad=False, so nothing "
        "can train: backward() failed"
    )
