"""--tensorboard writes real event files; the text report ends with the same story in brief."""

from __future__ import annotations

from pathlib import Path

from cc_testing import SCRIPTS, convcheck
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convcheck.findings import Finding, Location, Report, RunSummary, Severity
from convcheck.report import render
from convcheck.report.text import sparkline


def _load(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_event_files_per_rank_with_grouped_tags(tmp_path: Path) -> None:
    logs = tmp_path / "tb"
    result = convcheck(
        "run", "--ignore", "CC002", "--nproc-per-node", "2", "--steps", "10", "--max-batches-per-epoch", "4", "--format", "json",
        "--tensorboard", logs, SCRIPTS / "ddp_torchrun.py",
    )
    assert result.code == 0, result.stderr
    (run_folder,) = logs.iterdir()
    assert result.report["run"]["tensorboard_dir"] == str(run_folder)
    assert sorted(p.name for p in run_folder.iterdir()) == ["rank0", "rank1"]
    acc = _load(run_folder / "rank0")
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr_group0", "grad_norm/global", "grad_norm/0.weight", "grad_norm/2.bias",
            "update_ratio/0.weight", "nonfinite/grad_fraction"} <= scalars
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 11))
    assert all(0.0 < e.value < 5.0 for e in loss)
    lr = acc.Scalars("train/lr_group0")
    assert [e.step for e in lr] == list(range(1, 11)) and {round(e.value, 6) for e in lr} == {0.05}
    # Layer statistics on the sampled steps: the first five and every tenth.
    assert [e.step for e in acc.Scalars("grad_norm/global")] == [1, 2, 3, 4, 5, 10]
    assert [e.step for e in acc.Scalars("update_ratio/0.weight")] == [1, 2, 3]
    assert all(0 < e.value < 1 for e in acc.Scalars("update_ratio/0.weight"))
    assert sorted(acc.Tags()["histograms"]) == sorted(
        f"{kind}/{name}" for kind in ("weights", "grads") for name in ("0.weight", "0.bias", "2.weight", "2.bias")
    )
    assert sorted({e.step for e in acc.Histograms("weights/0.weight")}) == [1, 10]
    assert acc.Tags()["tensors"] == ["convcheck/findings/text_summary"]


def test_amp_scale_tags(tmp_path: Path) -> None:
    logs = tmp_path / "tb"
    result = convcheck(
        "run", "--ignore", "CC002", "--nproc-per-node", "2", "--steps", "4", "--max-batches-per-epoch", "3",
        "--tensorboard", logs,
        SCRIPTS / "cuda_ddp_amp.py",
        env={"COLUMNS": "400"},  # long temporary paths stay on one line
    )
    assert result.code == 0, result.stderr
    (run_folder,) = logs.iterdir()
    assert f"TensorBoard event files: {run_folder}\n  view them with: tensorboard --logdir {logs}\n" in result.stdout
    acc = _load(run_folder / "rank1")
    scale = acc.Scalars("amp/scale")
    assert [e.step for e in scale] == [1, 2, 3, 4] and {e.value for e in scale} == {65536.0}


def test_sparkline() -> None:
    assert sparkline([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == "▁▂▃▄▅▆▇█"
    assert sparkline([2.0, 2.0]) == "▁▁"
    assert sparkline([1.0, float("nan"), 3.0]) == "▁!█"
    assert len(sparkline([float(i) for i in range(100)], width=40)) == 40


def test_terminal_view_exact() -> None:
    report = Report(
        script="train.py",
        findings=[
            Finding(code="CC003", name="loss-double-normalization", severity=Severity.ERROR, message="divided twice",
                    location=Location(path="train.py", line=9), evidence={"loss_node": "NllLossBackward0", "reduction": "mean", "batch_size": 32,
                              "divisors": [32], "backwards_per_step": 1}, headline="divisors", fix="f")
        ],
        run=RunSummary(
            status="stopped-at-budget", wall_seconds=1.0,
            loss_curve=[2.3, 2.1, 1.9, 1.2, 0.8, 0.5],
            top_grad_layers=[{"name": "fc.weight", "norm": 1.23456, "step": 5}, {"name": "fc.bias", "norm": 0.5, "step": 5}],
        ),
    )
    text = render(report, "text")
    assert text.index(" ERROR") < text.index("At a glance")  # the story ends the report
    glance = text[text.index("At a glance"):text.index("1 error")]
    assert glance == (
        "At a glance\n"
        "  loss       ██▇▄▂▁  2.3 → 0.5 (6 steps)\n"
        "  grad norm  fc.weight 1.23 · fc.bias 0.5 (step 5)\n"
        "  CC003      A mean-reduced loss over a batch of 32 was divided by 32 (1 backward pass per step).\n"
        "\n"
    )
