"""CC003 loss-double-normalization: loss graphs recorded at backward, source snippets, a real script."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc003_loss_double_normalization import LossDoubleNormalization, loss_terms
from convcheck.runtime.trace import RunTrace, load_events
from convcheck.static.context import StaticContext

CTX = StaticContext(path=Path("train.py"), source="", tree=ast.parse(""))


def _div(value: float, parent: int = -1, depth: int = 0) -> dict:
    return {"name": "DivBackward0", "depth": depth, "parent": parent,
            "attrs": {"other": {"shape": [], "value": value}, "self": None}}


def _nll(batch: int, reduction: int = 1, parent: int = -1, depth: int = 0) -> dict:
    return {"name": "NllLossBackward0", "depth": depth, "parent": parent,
            "attrs": {"reduction": reduction, "self": {"shape": [batch, 4]}, "target": {"shape": [batch]}}}


def _run(graphs: list[list[dict]], per_step: int = 1) -> RunTrace:
    events: list[dict] = [{"ev": "process", "pid": 1, "role": "entry"}]
    n = 0
    for step in range(len(graphs) // per_step):
        for graph in graphs[step * per_step:(step + 1) * per_step]:
            n += 1
            events.append({"ev": "backward", "n": n, "step": step, "loss": 1.0, "loc": ["train.py", 20],
                           "graph": graph})
        events.append({"ev": "step", "opt": 0, "n": step + 1, "backwards": per_step, "grad": [0], "lrs": [0.1]})
    return RunTrace(processes=[load_events(events)])


def _findings(run: RunTrace) -> list[tuple[str, int | None]]:
    check = LossDoubleNormalization()
    return [(f.severity.value, f.location.line if f.location else None) for f in check.check_runtime(run, CTX)]


def test_mean_loss_divided_by_batch_size_is_an_error() -> None:
    graph = [_div(32.0), _nll(32, parent=0, depth=1)]
    check = LossDoubleNormalization()
    (finding,) = check.check_runtime(_run([graph] * 3), CTX)
    assert finding.severity.value == "error"
    assert finding.evidence["batch_size"] == 32 and finding.evidence["divisors"] == [32.0]
    assert "divided by 32" in finding.message and "32× too small" in finding.message


@pytest.mark.parametrize(
    ("graph", "per_step", "expected"),
    [
        # sum-reduced loss divided by the number of samples: a mean, correct
        ([_div(32.0), _nll(32, reduction=2, parent=0, depth=1)], 1, []),
        # mean-reduced loss alone
        ([_nll(32)], 1, []),
        # a division that is not the batch size (a temperature, a constant)
        ([_div(2.0), _nll(32, parent=0, depth=1)], 1, []),
        # accumulation over 4 micro-batches, divided by 4: correct
        ([_div(4.0), _nll(16, parent=0, depth=1)], 4, []),
        # accumulation with no division
        ([_nll(16)], 4, [("warning", 20)]),
        # accumulation divided by 4 and by the batch size
        ([_div(4.0), _div(16.0, parent=0, depth=1), _nll(16, parent=1, depth=2)], 4, [("error", 20)]),
        # sum-reduced, divided by the batch size and by the accumulation count: correct
        ([_div(64.0), _nll(16, reduction=2, parent=0, depth=1)], 4, []),
        # the mean written as a multiplication by 1/B
        ([{"name": "MulBackward0", "depth": 0, "parent": -1, "attrs": {"other": {"shape": [], "value": 0.125}}},
          _nll(8, parent=0, depth=1)], 1, [("error", 20)]),
    ],
    ids=["sum-over-n", "mean", "temperature", "accum-ok", "accum-missing", "accum-twice", "sum-accum", "mul-inverse"],
)
def test_runtime_verdicts(graph: list[dict], per_step: int, expected: list) -> None:
    assert _findings(_run([graph] * (per_step * 3), per_step=per_step)) == expected


def test_label_smoothing_internal_mean_is_not_a_division() -> None:
    # cross_entropy(label_smoothing=0.1) as recorded: 0.9 * nll + 0.025 * (sum / B)
    graph = [
        {"name": "AddBackward0", "depth": 0, "parent": -1},
        {"name": "MulBackward1", "depth": 1, "parent": 0, "attrs": {"other": 0.9}},
        {"name": "MulBackward1", "depth": 1, "parent": 0, "attrs": {"other": 0.025}},
        _nll(8, parent=1, depth=2),
        _div(8.0, parent=2, depth=2),
        {"name": "SumBackward0", "depth": 3, "parent": 4, "attrs": {"self_sym_sizes": [8]}},
    ]
    assert [t.divisors for t in loss_terms(graph)] == [[], []]
    assert _findings(_run([graph] * 3)) == []
    doubled = [_div(8.0)] + [{**n, "parent": n["parent"] + 1, "depth": n["depth"] + 1} for n in graph]
    assert _findings(_run([doubled] * 3)) == [("error", 20)]


def test_graphs_from_torch() -> None:
    torch = pytest.importorskip("torch")
    from convcheck.runtime.graph import summarize_graph

    x = torch.randn(8, 4, requires_grad=True)
    y = torch.randint(0, 4, (8,))
    f = torch.nn.functional
    cases = {
        "ce/B": (f.cross_entropy(x, y) / x.size(0), ["double"]),
        "ce/=B": (f.cross_entropy(x, y).div(8), ["double"]),
        "sum/B": (f.cross_entropy(x, y, reduction="sum") / 8, ["ok"]),
        "smooth": (f.cross_entropy(x, y, label_smoothing=0.1), ["ok", "ok"]),
        "mse/B": (f.mse_loss(x, torch.zeros(8, 4)) / 8, ["double"]),
        "l1/B": (f.l1_loss(x, torch.zeros(8, 4)) / 8, ["double"]),
        "bce/B": (f.binary_cross_entropy_with_logits(x, torch.rand(8, 4)) / 8, ["double"]),
        "mean/B": ((x ** 2).mean() / 8, ["double"]),
        "kl/B": (f.kl_div(f.log_softmax(x, 1), f.softmax(x.detach(), 1), reduction="batchmean") / 8, ["double"]),
    }
    from convcheck.checks.cc003_loss_double_normalization import _judge

    for label, (loss, kinds) in cases.items():
        terms = loss_terms(summarize_graph(loss.grad_fn))
        assert [_judge(t, 1, {}).kind for t in terms] == kinds, label


STATIC = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

criterion = nn.CrossEntropyLoss()
summed = nn.CrossEntropyLoss(reduction="sum")
for x, y in loader:
    loss = criterion(model(x), y) / x.size(0)  # expect
    loss.backward()
for x, y in loader:
    loss = criterion(model(x), y)
    loss /= len(x)  # expect
    loss.backward()
for x, y in loader:
    (F.mse_loss(model(x), y) / args.batch_size).backward()  # expect
for x, y in loader:
    bs = x.shape[0]
    loss = F.cross_entropy(model(x), y).mean() / bs  # expect
    scaler.scale(loss).backward()
for x, y in loader:
    loss = summed(model(x), y) / x.size(0)
    loss.backward()
for x, y in loader:
    loss = criterion(model(x), y) / accum_steps
    loss.backward()
    total += loss.item() / x.size(0)
    logged = criterion(model(x), y) / x.size(0)
    avg = running / len(loader)
'''


def test_static_expectations() -> None:
    source = textwrap.dedent(STATIC)
    ctx = StaticContext(path=Path("snippet.py"), source=source, tree=ast.parse(source))
    found = list(LossDoubleNormalization().check_static(ctx))
    expected = [n for n, line in enumerate(source.splitlines(), start=1) if line.endswith("# expect")]
    assert [f.location.line for f in found] == expected
    assert {f.severity.value for f in found} == {"warning"} and {f.source for f in found} == {"static"}


def test_static_finding_is_dropped_when_the_graphs_show_no_division() -> None:
    source = "loss = criterion(model(x), y) / x.size(0)\nloss.backward()\ncriterion = nn.CrossEntropyLoss()\n"
    source = "import torch.nn as nn\ncriterion = nn.CrossEntropyLoss()\n" + source
    ctx = StaticContext(path=Path("t.py"), source=source, tree=ast.parse(source))
    check = LossDoubleNormalization()
    check.runtime_follows = True  # a run follows: static findings wait for it
    assert list(check.check_static(ctx)) == []
    assert list(check.check_runtime(_run([[_nll(32)]] * 3), ctx)) == []


def test_trainer_class_script_end_to_end(tmp_path: Path) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC003", "--steps", "3",
                       SCRIPTS / "cc003_trainer.py", "--batch-size", "16")
    assert result.code == 0, result.stderr
    (finding,) = result.findings("CC003")
    assert finding["severity"] == "error" and finding["source"] == "static+runtime"
    assert finding["location"]["line"] == _line(SCRIPTS / "cc003_trainer.py", "/ self.args.batch_size")
    assert finding["evidence"]["batch_size"] == 16
    fixed = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC003", "--steps", "3",
                      SCRIPTS / "cc003_trainer.py", "--batch-size", "16", "--sum")
    assert fixed.code == 0, fixed.stderr
    assert fixed.findings("CC003") == []


def _line(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_steps_skipped_by_a_grad_scaler_are_not_accumulation() -> None:
    events: list[dict] = [{"ev": "process", "pid": 1, "role": "entry"}]
    graph = [_nll(16)]
    n = 0
    for skipped in (True, False, True, False, False):
        n += 1
        events.append({"ev": "backward", "n": n, "step": 0, "loss": 1.0, "loc": ["train.py", 20], "graph": graph})
        if not skipped:
            events.append({"ev": "step", "opt": 0, "n": n, "backwards": 2 if n in (2, 4) else 1, "grad": [0]})
        events.append({"ev": "scaler", "call": "step", "skipped": skipped, "opt": 0})
    assert _findings(RunTrace(processes=[load_events(events)])) == []


def test_several_losses_on_one_batch_are_not_accumulation() -> None:
    run = _run([[_nll(16)]] * 6, per_step=2)
    events = run.processes[0].events
    assert _findings(run) == [("warning", 20)]
    # The loader drew one batch per optimizer step: two losses (two heads) on the same batch.
    events.append({"ev": "loader_epoch", "loader": 0, "epoch": 1, "batches": 3, "step_start": 0, "step": 3})
    assert _findings(run) == []


def test_a_weight_on_an_auxiliary_term_is_not_a_division() -> None:
    torch = pytest.importorskip("torch")
    from convcheck.checks.cc003_loss_double_normalization import _judge
    from convcheck.runtime.graph import summarize_graph

    x = torch.randn(10, 4, requires_grad=True)
    y = torch.randint(0, 4, (10,))
    aux = torch.randn(10, 3, requires_grad=True)
    f = torch.nn.functional
    loss = f.cross_entropy(x, y) + 0.1 * aux.pow(2).mean()  # 0.1 = 1/10 and aux has 10 rows
    assert [_judge(t, 1, {}).kind for t in loss_terms(summarize_graph(loss.grad_fn))] == ["ok", "ok"]
    doubled = f.cross_entropy(x, y) / x.size(0) + 0.1 * aux.pow(2).mean()
    assert "double" in [_judge(t, 1, {}).kind for t in loss_terms(summarize_graph(doubled.grad_fn))]


def test_a_token_mean_divided_again_by_its_token_count() -> None:
    def run(*flags: str) -> list[dict]:
        result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "6", "--select", "CC003",
                           SCRIPTS / "cc003_token_mean.py", *flags)
        assert result.code == 0, result.stdout + result.stderr
        return result.findings("CC003")

    assert run() == []
    [finding] = run("--bug")
    assert finding["severity"] == "error"
    assert finding["evidence"]["averaged_over"] == {"count": 39, "what": "counted targets (ignore_index left out)"}
    assert finding["evidence"]["divisors"] == [39.0]
    assert finding["message"].startswith("The loss (NllLossBackward0, reduction='mean') is already a mean over its "
                                         "39 counted targets")


def test_double_mean_with_undivided_accumulation_states_the_net_factor() -> None:
    # A divisor of 1 (accelerate's backward without accumulation of its own), then the batch size: no 1/4.
    graph = [_div(1.0), _div(8.0, parent=0, depth=1), _nll(8, parent=1, depth=2)]
    (finding,) = LossDoubleNormalization().check_runtime(_run([graph] * 8, per_step=4), CTX)
    assert finding.severity.value == "error"
    assert finding.message == (
        "4 backward() calls accumulate into each optimizer step and the loss (NllLossBackward0, reduction='mean' "
        "over a batch of 8) was divided by 8: by the batch size a second time, and not by the accumulation count. "
        "Each micro-batch's gradient is 8× too small and 4 of them are summed, so each step's gradient is 2× too "
        "small (8× smaller from the double mean, 4× larger from the undivided accumulation)."
    )
    assert finding.evidence["gradient_scale"] == 0.5
    assert finding.fix.startswith("Remove the division by the batch size") and "accum_steps" in finding.fix


TRAINER_SUBCLASS = '''\
import torch
from transformers import Trainer


class MyTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        logits = model(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss = loss / labels.shape[0]  # expect
        return (loss, logits) if return_outputs else loss
'''


def test_a_framework_callbacks_returned_loss_is_read_statically() -> None:
    ctx = StaticContext(path=Path("t.py"), source=TRAINER_SUBCLASS, tree=ast.parse(TRAINER_SUBCLASS))
    (finding,) = LossDoubleNormalization().check_static(ctx)
    assert finding.location.line == 10
    # At run time the static site names the line, and the fix speaks of the Trainer's own normalisation.
    check = LossDoubleNormalization()
    check.runtime_follows = True
    assert list(check.check_static(ctx)) == []
    graph = [_div(8.0), _nll(8, parent=0, depth=1)]
    (finding,) = check.check_runtime(_run([graph] * 8, per_step=4), ctx)
    assert finding.location.line == 10 and finding.source == "static+runtime"
    assert "num_items_in_batch" in finding.fix and "loss_is_scaled_for_ga = False" in finding.fix
