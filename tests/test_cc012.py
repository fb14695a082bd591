"""CC012 loss-not-decreasing: recorded traces, and a Trainer with a detached loss or broadcast targets."""

from __future__ import annotations

import math

import pytest
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc012_loss_not_decreasing import LossNotDecreasing
from convcheck.runtime.trace import RunTrace, load_events

LOC = ["train.py", 30]
BROADCAST = ("Using a target size (torch.Size([16])) that is different to the input size (torch.Size([16, 1])). "
             "This will likely lead to incorrect results due to broadcasting. Please ensure they have the same size.")


def ce_graph(classes: int, batch: int = 8) -> list[dict]:
    return [{"name": "NllLossBackward0", "depth": 0, "parent": -1,
             "attrs": {"reduction": 1, "self": {"shape": [batch, classes]}, "target": {"shape": [batch]}}},
            {"name": "LogSoftmaxBackward0", "depth": 1, "parent": 0, "attrs": {"dim": 1}},
            {"name": "AddmmBackward0", "depth": 2, "parent": 1}]


def trace(losses: list[float], graph: list[dict] | None = None, grad: bool = True, extra: list[dict] = ()) -> RunTrace:
    events = [{"ev": "process"}, *extra]
    for n, loss in enumerate(losses, start=1):
        backward = {"ev": "backward", "n": n, "step": n - 1, "loss": loss, "loc": LOC}
        if graph is not None:
            backward["graph"] = graph
        events += [backward, {"ev": "step", "opt": 0, "n": n, "grad": [0, 1] if grad else []}]
    return RunTrace(processes=[load_events(events)])


def runtime(run: RunTrace) -> list:
    return list(LossNotDecreasing().check_runtime(run, None))


def test_broadcast_warning_becomes_a_located_error() -> None:
    warning = {"ev": "warning", "category": "UserWarning", "message": BROADCAST, "loc": ["train.py", 23], "step": 0}
    [finding] = runtime(trace([1.0, 0.9, 0.8], extra=[warning, dict(warning)]))
    assert finding.severity.value == "error"
    assert finding.location.line == 23
    assert (finding.evidence["output_shape"], finding.evidence["target_shape"]) == ("16, 1", "16")


def test_single_column_cross_entropy() -> None:
    [finding] = runtime(trace([0.0] * 5, graph=ce_graph(1)))
    assert finding.severity.value == "error"
    assert finding.evidence["shape"] == [8, 1]
    assert "single output column" in finding.message


def test_single_column_with_soft_targets() -> None:
    graph = [{"name": "DivBackward1", "depth": 0, "parent": -1},
             {"name": "NegBackward0", "depth": 1, "parent": 0},
             {"name": "SumBackward0", "depth": 2, "parent": 1},
             {"name": "MulBackward0", "depth": 3, "parent": 2, "attrs": {"other": {"shape": [32, 1]}}},
             {"name": "LogSoftmaxBackward0", "depth": 4, "parent": 3, "attrs": {"dim": 1}}]
    [finding] = runtime(trace([-0.0] * 5, graph=graph))
    assert finding.evidence["shape"] == [32, 1]


def test_detached_loss() -> None:
    [finding] = runtime(trace([0.5, 0.6, 0.7], graph=[], grad=False))
    assert finding.severity.value == "error"
    assert finding.evidence["loss_is_leaf"] is True
    assert finding.location.line == 30


def test_zero_and_constant_losses() -> None:
    [zero] = runtime(trace([0.0] * 6, graph=[{"name": "MeanBackward0", "depth": 0, "parent": -1}]))
    assert "exactly 0" in zero.message
    [constant] = runtime(trace([0.6931] * 6))
    assert "0.6931 at all 6" in constant.message
    assert runtime(trace([0.6931] * 4)) == []  # too few to tell


@pytest.mark.parametrize("first, expected_finding", [(math.log(10), False), (2.0, False), (12.0, True)])
def test_initial_loss_against_ln_c(first: float, expected_finding: bool) -> None:
    found = runtime(trace([first, first * 0.9, first * 0.8], graph=ce_graph(10)))
    assert bool(found) == expected_finding
    if found:
        assert found[0].severity.value == "info"
        assert abs(found[0].evidence["expected"] - math.log(10)) < 1e-9


def test_healthy_run_is_quiet() -> None:
    assert runtime(trace([2.3, 2.1, 1.9, 1.7, 1.6, 1.4], graph=ce_graph(10))) == []


@pytest.mark.parametrize("mode, line", [("detached", 32), ("broadcast", 23)])
def test_trainer_modes(mode: str, line: int) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "3", "--select", "CC012",
                       SCRIPTS / "cc012_trainer.py", "--mode", mode)
    [finding] = result.findings("CC012")
    assert (finding["severity"], finding["location"]["line"]) == ("error", line)


# -- overfit one batch ----------------------------------------------------------------------------------

def overfit_variant(curve: list[float], repeated: bool = True) -> RunTrace:
    events = [{"ev": "process"}]
    if repeated:
        events.append({"ev": "repeat_batch", "loader": 0, "step": 0, "fingerprint": "[32, 6]:1.0"})
    for n, loss in enumerate(curve, start=1):
        events += [{"ev": "backward", "n": n, "step": n - 1, "loss": loss, "loc": LOC},
                   {"ev": "step", "opt": 0, "n": n, "grad": [0], "lrs": [0.001]}]
    return RunTrace(processes=[load_events(events)])


def with_overfit(curve: list[float], repeated: bool = True) -> RunTrace:
    from convcheck.checks.cc012_loss_not_decreasing import OVERFIT_RUN

    run = trace([2.3, 2.2, 2.25, 2.1, 2.0])
    run.variants[OVERFIT_RUN] = overfit_variant(curve, repeated)
    return run


def test_model_that_cannot_fit_one_batch() -> None:
    [finding] = runtime(with_overfit([100.0 - 0.01 * i for i in range(30)]))
    assert finding.severity.value == "warning"
    assert finding.evidence["steps"] == 30
    assert finding.location.line == 30
    assert "cannot fit a single batch" in finding.message


def test_model_that_fits_one_batch_is_quiet() -> None:
    assert runtime(with_overfit([2.3 * 0.9 ** i for i in range(30)])) == []


def test_overfit_run_without_a_dataloader_says_nothing() -> None:
    assert runtime(with_overfit([100.0] * 30, repeated=False)) == []


def test_overfit_run_is_requested_only_when_enabled() -> None:
    from static_expect import context

    from convcheck.checks.cc012_loss_not_decreasing import OVERFIT_RUN

    source = "from torch.utils.data import DataLoader\n"
    check = LossNotDecreasing()
    assert check.extra_runs(None, 20, context(source)) == {}
    check.options = {"overfit-steps": 30}
    [(label, variant)] = check.extra_runs(None, 20, context(source)).items()
    assert (label, variant.steps, variant.repeat_first_batch) == (OVERFIT_RUN, 30, True)
    assert check.extra_runs(None, 20, context("x = 1\n")) == {}


def test_overfit_one_batch_end_to_end(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "pyproject.toml").write_text("[tool.convcheck.checks.CC012]\noverfit-steps = 25\n")
    script = tmp_path / "train.py"
    script.write_text(
        "import torch, torch.nn as nn\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(512, 6)\n"
        "y = (x @ torch.randn(6, 1)) * 100  # targets in the hundreds\n"
        "loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)\n"
        "model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1), nn.Tanh())  # bounded output\n"
        "opt = torch.optim.Adam(model.parameters(), lr=1e-3)\n"
        "for epoch in range(20):\n"
        "    for xb, yb in loader:\n"
        "        opt.zero_grad()\n"
        "        nn.functional.mse_loss(model(xb), yb).backward()\n"
        "        opt.step()\n"
    )
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "3", "--select", "CC012", script,
                       cwd=tmp_path)
    [finding] = result.findings("CC012")
    assert (finding["severity"], finding["location"]["line"]) == ("warning", 12)
    assert finding["evidence"]["steps"] == 25


def test_gradients_cleared_before_the_step_are_left_to_cc008() -> None:
    run = trace([0.5, 0.6, 0.7], graph=[{"name": "MseLossBackward0", "depth": 0, "parent": -1}], grad=False)
    run.processes[0].events.insert(3, {"ev": "zero_grad", "kind": "optimizer", "opt": 0, "step": 0, "backwards": 1})
    assert runtime(run) == []


# -- inputs and labels shuffled apart -------------------------------------------------------------------------

def loaders(second_indices: list[int], length: int = 64, sampler: str = "RandomSampler") -> RunTrace:
    events = [{"ev": "process"},
              {"ev": "loader", "id": 0, "batch_size": 8, "sampler": sampler, "dataset_len": 64, "loc": ["t.py", 5]},
              {"ev": "loader", "id": 1, "batch_size": 8, "sampler": sampler, "dataset_len": length,
               "loc": ["t.py", 6]}]
    run = trace([2.0, 1.9, 1.8, 1.7], extra=events[1:])
    first = list(range(32))
    for loader, indices in ((0, first), (1, second_indices)):
        run.processes[0].events.append({"ev": "loader_epoch", "loader": loader, "epoch": 1, "batches": 4,
                                        "indices": indices, "step": 4, "step_start": 0})
    return run


def test_inputs_and_labels_shuffled_apart() -> None:
    [finding] = runtime(loaders(list(reversed(range(32)))))
    assert finding.severity.value == "warning"
    assert finding.location.line == 6
    assert finding.evidence["positions_matching"] == 0


def test_loaders_in_step_or_of_other_sizes_are_quiet() -> None:
    assert runtime(loaders(list(range(32)))) == []  # same order: one shared generator
    assert runtime(loaders(list(reversed(range(32))), length=1000)) == []  # labeled + unlabeled data
    assert runtime(loaders(list(reversed(range(32))), sampler="SequentialSampler")) == []


def test_a_float32_run_whose_loss_diverges_to_nan_never_passes() -> None:
    # The loss grows for 12 steps before it turns NaN: one finding, CC015's (lower the lr), not a second one here.
    result = convcheck("run", "--format", "json", SCRIPTS / "nonfinite_runs.py", "--diverge")
    assert result.code == 1, result.stdout + result.stderr
    [finding] = result.findings()
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC015", "error", 14)
    assert finding["evidence"]["nonfinite_from_step"] == 13
    assert finding["message"].startswith("The loss rose from 1.568 (step 1) to 3.164e+36 (step 12)")


def test_a_loss_that_turns_nan_with_no_growth_before_is_reported_here() -> None:
    [finding] = runtime(trace([0.7, 0.69, 0.68, 0.7, math.nan, math.nan, math.nan]))
    assert (finding.code, finding.severity.value) == ("CC012", "error")
    assert finding.message.startswith("The loss is inf/NaN from step 5 to the last step observed (7)")


def test_a_loss_that_grows_into_nan_is_left_to_cc015() -> None:
    assert runtime(trace([1.5, 1.3e3, 3.5e6, 6.3e9, 7.7e12, math.nan, math.nan, math.nan])) == []


# -- inputs and labels drawn by two index vectors ----------------------------------------------------------

def pairing(step: int, same: bool = False, permutation: bool = True, bases: tuple[int, int] = (3, 4),
            sources: tuple[int, int] = (1, 2), rows: tuple[int, int] = (512, 512)) -> dict:
    def side(which: int) -> dict:
        return {"source": sources[which], "rows": rows[which], "n": 32, "base": bases[which],
                "permutation": permutation, "distinct": True, "head": [which, 5, 6, 7],
                "loc": ["t.py", 34 + which]}

    return {"ev": "batch_pairing", "n": step + 1, "step": step, "same_index": same, "input": side(0),
            "target": side(1)}


def test_two_permutations_for_inputs_and_targets_are_an_error() -> None:
    [finding] = runtime(trace([0.7, 0.71, 0.69], extra=[pairing(0), pairing(1), pairing(2)]))
    assert (finding.severity.value, finding.location.line) == ("error", 35)
    assert "inputs at t.py:34, targets at t.py:35" in finding.message
    assert "two different permutations of the 512 rows" in finding.message
    assert finding.evidence["batches"] == 3


def test_index_vectors_not_known_to_be_permutations_are_info() -> None:
    extra = [pairing(0, permutation=False), pairing(1, permutation=False)]
    [finding] = runtime(trace([0.7, 0.71, 0.69], extra=extra))
    assert finding.severity.value == "info"
    assert "may be deliberate" in finding.message
    [same_base] = runtime(trace([0.7, 0.71], extra=[pairing(0, bases=(3, 3)), pairing(1, bases=(3, 3))]))
    assert same_base.severity.value == "info"  # one permutation, two offsets: an off-by-some, or a design


@pytest.mark.parametrize("extra", [
    [pairing(0), pairing(0)],  # one step only
    [pairing(0), pairing(1, same=True), pairing(2)],  # once the same rows: not consistent
    [pairing(0, sources=(1, 1)), pairing(1, sources=(1, 1))],  # one tensor (an autoencoder's own rows)
    [pairing(0, rows=(512, 4096)), pairing(1, rows=(512, 4096))],  # tensors of other lengths
])
def test_index_vectors_that_may_pair_correctly_are_quiet(extra: list[dict]) -> None:
    assert runtime(trace([0.7, 0.71, 0.69], extra=extra)) == []


@pytest.mark.parametrize("script, args, lines", [
    ("cc012_two_permutations.py", ["--mode", "two"], (34, 35)),
    ("cc012_two_permutations.py", ["--mode", "reshuffled"], (26, 27)),
    ("cc012_numpy_permutations.py", [], (21, 21)),
])
def test_inputs_and_labels_indexed_by_two_permutations_end_to_end(script: str, args: list[str],
                                                                  lines: tuple[int, int]) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "4", "--select", "CC012",
                       SCRIPTS / script, *args, cwd=SCRIPTS)
    [finding] = result.findings("CC012")
    assert (finding["severity"], finding["location"]["line"]) == ("error", lines[1])
    assert f"inputs at {script}:{lines[0]}, targets at {script}:{lines[1]}." in finding["message"]
    assert [finding["evidence"]["inputs_at"][1], finding["evidence"]["targets_at"][1]] == list(lines)


@pytest.mark.parametrize("script, args", [("cc012_two_permutations.py", ["--mode", "one"]),
                                          ("cc012_numpy_permutations.py", ["--one"])])
def test_one_permutation_for_both_is_quiet(script: str, args: list[str]) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "4", "--select", "CC012",
                       SCRIPTS / script, *args)
    assert result.code == 0, result.stderr
    assert result.findings("CC012") == []
