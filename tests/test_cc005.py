"""CC005 lr-not-scaled: static snippets, recorded traces, and scripts written in other styles."""

from __future__ import annotations

import math

import pytest
from cc_testing import SCRIPTS, convcheck
from static_expect import context, expected, static_findings

from convcheck.checks.cc005_lr_not_scaled import VARIANT, LrNotScaled, suggested_lr
from convcheck.registry import RunVariant
from convcheck.runtime.trace import RunTrace, load_events

# -- static --------------------------------------------------------------------------------------

HEAD = """
import math, os
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
dist.init_process_group("gloo")
model = DDP(Net())
"""

STATIC_CASES = {
    "sgd_constant": HEAD + """
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # expect: CC005 warning
""",
    "adam_constant_through_names": HEAD + """
BASE = 3e-4
lr = BASE
opt = torch.optim.AdamW(model.parameters(), lr)  # expect: CC005 info
""",
    "adam_default_lr": HEAD + """
from torch.optim import Adam
opt = Adam(model.parameters())  # expect: CC005 info
""",
    "linear_scaling": HEAD + """
opt = torch.optim.SGD(model.parameters(), lr=0.1 * dist.get_world_size())
""",
    "env_world_size": HEAD + """
world = int(os.environ["WORLD_SIZE"])
base_lr = 0.1
opt = torch.optim.SGD(model.parameters(), lr=base_lr * world)
""",
    "sqrt_scaling_through_args": HEAD + """
args = parser.parse_args()
args.lr = args.base_lr * math.sqrt(args.world_size)
opt = torch.optim.Adam(model.parameters(), lr=args.lr)
""",
    "global_batch_kept_fixed": HEAD + """
loader = DataLoader(data, batch_size=256 // dist.get_world_size())
opt = torch.optim.SGD(model.parameters(), lr=0.1)
""",
    "warmup_to_scaled_lr": HEAD + """
opt = torch.optim.SGD(model.parameters(), lr=0.1)
ws = dist.get_world_size()
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(ws, 1 + step * (ws - 1) / 500))
""",
    "param_groups_scaled_later": HEAD + """
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for group in opt.param_groups:
    group["lr"] *= dist.get_world_size()
""",
    "single_process_script": """
import torch
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
""",
    "spawn_passes_a_scaled_lr": """
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP
def train(rank, n, lr):
    model = DDP(Net())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
if __name__ == "__main__":
    world_size = 4
    mp.spawn(train, args=(world_size, 0.1 * world_size), nprocs=world_size)
""",
    "spawn_passes_a_constant_lr": """
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP
def train(rank, n, lr):
    model = DDP(Net())
    opt = torch.optim.SGD(model.parameters(), lr=lr)  # expect: CC005 warning
if __name__ == "__main__":
    mp.spawn(train, args=(4, 0.1), nprocs=4)
""",
}


@pytest.mark.parametrize("name", sorted(STATIC_CASES))
def test_static(name: str) -> None:
    source = STATIC_CASES[name]
    assert static_findings(_adaptive_too(), source) == expected(source)


def _adaptive_too() -> LrNotScaled:
    """The check with the square-root advice for adaptive optimizers switched on."""
    check = LrNotScaled()
    check.options = {"adaptive-optimizers": True}
    return check


@pytest.mark.parametrize("name", ["adam_constant_through_names", "adam_default_lr"])
def test_adaptive_optimizers_are_quiet_by_default(name: str) -> None:
    assert static_findings(LrNotScaled(), STATIC_CASES[name]) == set()
    assert runtime(trace(4, 1e-3, 1e-3, cls="AdamW")) == []


def test_asks_for_a_single_process_run_only_under_ddp() -> None:
    ctx = context("")
    assert LrNotScaled().extra_runs(2, 8, ctx) == {VARIANT: RunVariant(nproc_per_node=1, steps=1)}
    assert LrNotScaled().extra_runs(1, 8, ctx) == {}
    assert LrNotScaled().extra_runs(None, 8, ctx) == {}
    check = LrNotScaled()
    check.options = {"compare-run": False}
    assert check.extra_runs(2, 8, ctx) == {}
    # Only Adam in the source, and the square-root advice is off: no comparison run to pay for.
    adam = context(STATIC_CASES["adam_default_lr"])
    assert LrNotScaled().extra_runs(2, 8, adam) == {}
    assert _adaptive_too().extra_runs(2, 8, adam) == {VARIANT: RunVariant(nproc_per_node=1, steps=1)}
    assert LrNotScaled().extra_runs(2, 8, context(STATIC_CASES["sgd_constant"])) == {
        VARIANT: RunVariant(nproc_per_node=1, steps=1)
    }


def test_suggested_lr() -> None:
    assert suggested_lr(0.1, 4, "SGD") == pytest.approx(0.4)
    assert suggested_lr(1e-3, 4, "AdamW") == pytest.approx(2e-3)


# -- runtime on recorded traces ---------------------------------------------------------------------


def process(rank: int, world: int, lr: float, cls: str = "SGD", batch: int = 16, backwards: int = 1,
            line: int = 18) -> list[dict]:
    return [
        {"ev": "process", "rank": rank, "world_size": world},
        {"ev": "dist_init", "rank": rank, "world_size": world, "backend": "gloo"},
        {"ev": "loader", "id": 0, "batch_size": batch, "sampler": "DistributedSampler", "loc": ["train.py", 15]},
        {"ev": "optimizer", "opt": 0, "cls": cls, "groups": [{"params": [0], "lr": lr}], "loc": ["train.py", line]},
        {"ev": "step", "opt": 0, "n": 1, "backwards": backwards, "lrs": [lr], "loc": ["train.py", 25]},
        {"ev": "loader_epoch", "loader": 0, "epoch": 1, "batches": backwards, "step": 1, "step_start": 0,
         "indices": [], "n_indices": 0},
    ]


def trace(world: int, lr: float, single_lr: float | None, **kwargs) -> RunTrace:  # noqa: ANN003
    single_kwargs = {k[len("single_"):]: v for k, v in kwargs.items() if k.startswith("single_")}
    main_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("single_")}
    run = RunTrace(processes=[load_events(process(r, world, lr, **main_kwargs), pid=r + 1) for r in range(world)],
                   world_size=world)
    if single_lr is not None:
        merged = {**main_kwargs, **single_kwargs}
        run.variants[VARIANT] = RunTrace(processes=[load_events(process(0, 1, single_lr, **merged), pid=9)])
    return run


def runtime(run: RunTrace, source: str = "", deferred: bool = True, adaptive: bool = False) -> list:
    check = _adaptive_too() if adaptive else LrNotScaled()
    ctx = context(source)
    if deferred:
        check.runtime_follows = True
    check.check_static(ctx)
    return list(check.check_runtime(run, ctx))


def test_sgd_lr_invariant_across_world_sizes() -> None:
    [finding] = runtime(trace(2, 0.05, 0.05))
    assert (finding.severity.value, finding.source, finding.location.line) == ("warning", "runtime", 18)
    assert finding.evidence["lr_by_world_size"] == {"1": [0.05], "2": [0.05]}
    assert finding.evidence["global_batch"] == {"1": 16, "2": 32}
    assert finding.evidence["suggested_lr"] == pytest.approx(0.1)
    assert "lr 0.05 with 1 process and lr 0.05 with 2 processes" in finding.message
    assert "global batch was 16 with 1 process and 32 with 2" in finding.message
    assert "suggests lr 0.1 at world size 2" in finding.message


def test_adam_is_info_with_the_square_root_rule() -> None:
    [finding] = runtime(trace(4, 1e-3, 1e-3, cls="AdamW"), adaptive=True)
    assert finding.severity.value == "info"
    assert finding.evidence["suggested_lr"] == pytest.approx(2e-3)
    assert finding.evidence["rule"] == "square-root"


def test_accumulation_counts_in_the_global_batch() -> None:
    [finding] = runtime(trace(2, 0.1, 0.1, backwards=4))
    assert finding.evidence["global_batch"] == {"1": 64, "2": 128}


@pytest.mark.parametrize("single_lr", [0.05, 0.1 / math.sqrt(2), 0.01])
def test_lr_that_depends_on_the_world_size_is_quiet(single_lr: float) -> None:
    assert runtime(trace(2, 0.1, single_lr)) == []


def test_global_batch_kept_fixed_is_quiet() -> None:
    assert runtime(trace(2, 0.1, 0.1, batch=16, single_batch=32)) == []


def test_warmup_starting_at_zero_shows_nothing() -> None:
    assert runtime(trace(2, 0.0, 0.0)) == []
    # ... and leaves the word to the source.
    source = STATIC_CASES["sgd_constant"]
    [finding] = runtime(trace(2, 0.0, 0.0), source)
    assert finding.source == "static"


def test_single_process_run_is_quiet_even_with_a_static_finding() -> None:
    source = STATIC_CASES["sgd_constant"]
    assert static_findings(LrNotScaled(), source)
    assert runtime(trace(1, 0.1, None), source) == []


def test_static_and_runtime_make_one_finding() -> None:
    source = STATIC_CASES["sgd_constant"]
    line = source.splitlines().index("opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  "
                                     "# expect: CC005 warning") + 1
    [finding] = runtime(trace(2, 0.1, 0.1, line=line), source)
    assert (finding.source, finding.location.line, finding.severity.value) == ("static+runtime", line, "warning")


def test_static_warmup_keeps_a_step_one_comparison_quiet() -> None:
    assert runtime(trace(2, 0.1, 0.1), STATIC_CASES["warmup_to_scaled_lr"]) == []


def test_spawned_run_without_comparison_adds_the_observed_lr() -> None:
    source = STATIC_CASES["spawn_passes_a_constant_lr"]
    # When no runtime pass follows (static-only) the static pass reports it; a runtime pass alone adds nothing.
    [finding] = LrNotScaled().check_static(context(source))
    assert finding.source == "static"
    assert runtime(trace(4, 0.1, None, line=7), source, deferred=False) == []
    check = LrNotScaled()
    ctx = context(source)
    check.runtime_follows = True
    check.check_static(ctx)
    [finding] = check.check_runtime(trace(4, 0.1, None, line=7), ctx)
    assert finding.source == "static+runtime"
    assert finding.evidence["observed_lr"] == 0.1 and finding.evidence["world_size"] == 4
    assert finding.evidence["global_batch"] == 64 and finding.evidence["suggested_lr"] == pytest.approx(0.4)


# -- end to end, scripts in other styles -------------------------------------------------------------

@pytest.mark.parametrize(("script", "expect"), [
    ("cc005_torchrun_local_rank.py", {("warning", 29)}),
    ("cc005_torchrun_local_rank_fixed.py", set()),
])
def test_torchrun_script_reading_local_rank(script: str, expect: set) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC005", "--nproc-per-node", "2",
                       "--steps", "2", SCRIPTS / script, "--base-lr", "0.2")
    assert result.code == 0, result.stderr
    assert {(f["severity"], f["location"]["line"]) for f in result.findings("CC005")} == expect


def test_suggestion_starts_from_the_schedulers_base_lr() -> None:
    run = trace(2, 0.05, 0.05)
    for proc in [*run.processes, *run.variants[VARIANT].processes]:
        proc.first("optimizer")["groups"][0]["initial_lr"] = 0.2
    [finding] = runtime(run)
    assert "base lr 0.2" in finding.message and finding.evidence["suggested_lr"] == pytest.approx(0.4)


def test_batch_from_the_loss_when_there_is_no_dataloader() -> None:
    run = trace(2, 0.1, 0.1)
    graph = [{"name": "MeanBackward0", "depth": 0, "parent": -1, "attrs": {"self_sym_sizes": [12, 1]}}]
    for proc in [*run.processes, *run.variants[VARIANT].processes]:
        proc.events = [e for e in proc.events if e["ev"] not in ("loader", "loader_epoch")]
        proc.events.append({"ev": "backward", "n": 1, "step": 0, "loss": 0.5, "graph": graph})
    [finding] = runtime(run)
    assert finding.evidence["global_batch"] == {"1": 12, "2": 24}
