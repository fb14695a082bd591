"""CC013 ddp-replicas-diverge: per-rank traces, and a DDP trainer that bypasses its wrapper."""

from __future__ import annotations

from cc_testing import SCRIPTS, convcheck
from static_expect import context

from convcheck.checks.cc013_ddp_replicas_diverge import DdpReplicasDiverge
from convcheck.runtime.trace import RunTrace, load_events


def rank(r: int, norms: dict[int, list[float]], wrapper: bool = True, cls: str = "DistributedDataParallel",
         shapes: list[list[int]] = ([4, 2], [4]), ddp_built: bool = False) -> list[dict]:
    events = [{"ev": "process", "rank": r, "world_size": 2},
              {"ev": "dist_init", "rank": r, "world_size": 2, "backend": "gloo"},
              {"ev": "model", "cls": cls, "wrapper": wrapper,
               "params": [{"id": i, "name": n, "shape": s} for i, (n, s) in enumerate(zip(["fc.weight", "fc.bias"],
                                                                                          shapes))]},
              {"ev": "optimizer", "opt": 0, "cls": "SGD", "groups": [{"params": [0, 1], "lr": 0.1}],
               "loc": ["train.py", 14]}]
    if ddp_built or wrapper:
        events.append({"ev": "ddp_init", "module": "Net", "loc": ["train.py", 12], "step": 0})
    for n in range(1, 7):
        events.append({"ev": "backward", "n": n, "step": n - 1, "loss": 1.0, "loc": ["train.py", 19]})
        step = {"ev": "step", "opt": 0, "n": n, "grad": [0, 1], "loc": ["train.py", 20]}
        if n in norms:
            step["param_norms"] = norms[n]
        events.append(step)
    return events


SAME = {1: [1.5, 0.25], 2: [1.49, 0.26], 3: [1.48, 0.27]}


def runtime(*ranks: list[dict], source: str = "x = 1\n") -> list:
    trace = RunTrace(processes=[load_events(e, pid=i + 1) for i, e in enumerate(ranks)], world_size=len(ranks))
    return list(DdpReplicasDiverge().check_runtime(trace, context(source)))


def test_identical_replicas_are_quiet() -> None:
    assert runtime(rank(0, SAME), rank(1, dict(SAME))) == []


def test_rounding_below_the_tolerance_is_quiet() -> None:
    other = {n: [v * (1 + 1e-8) for v in norms] for n, norms in SAME.items()}
    assert runtime(rank(0, SAME), rank(1, other)) == []


def test_unwrapped_model_diverges_at_the_first_step() -> None:
    other = {1: [1.5, 0.3], 2: [1.47, 0.31], 3: [1.46, 0.33]}
    [finding] = runtime(rank(0, SAME, wrapper=False, cls="Net"), rank(1, other, wrapper=False, cls="Net"))
    assert finding.severity.value == "error"
    assert finding.location.line == 14  # the optimizer built over the unwrapped model
    assert finding.evidence["step"] == 1
    assert finding.evidence["norms_by_rank"] == {"0": 0.25, "1": 0.3}
    assert "not wrapped in DistributedDataParallel" in finding.message
    assert "`fc.bias`: rank 0: 0.25, rank 1: 0.3" in finding.message


def test_wrapped_model_diverging_later_shows_when_it_was_identical() -> None:
    other = {1: [1.5, 0.25], 2: [1.49, 0.26], 3: [1.4, 0.27]}
    [finding] = runtime(rank(0, SAME), rank(1, other))
    assert finding.evidence["step"] == 3
    assert finding.evidence["identical_before"] == [1, 2]
    assert finding.location.line == 20
    assert "wrapped in DDP" in finding.message


def test_wrapper_built_but_not_called() -> None:
    other = {1: [1.5, 0.3]}
    source = "from torch.nn.parallel import DistributedDataParallel as D\nm = D(net)\n"
    [finding] = runtime(rank(0, SAME, wrapper=False, cls="Net", ddp_built=True),
                        rank(1, other, wrapper=False, cls="Net", ddp_built=True), source=source)
    assert finding.location.line == 19
    assert "not the DDP wrapper" in finding.message


def test_sharded_models_are_not_compared() -> None:
    other = {1: [9.0, 9.0]}
    assert runtime(rank(0, SAME, cls="FullyShardedDataParallel"), rank(1, other, cls="FullyShardedDataParallel")) == []
    assert runtime(rank(0, SAME), rank(1, other, shapes=[[2, 2], [4]])) == []


def test_single_process_is_quiet() -> None:
    assert runtime(rank(0, SAME)) == []


def test_trainer_calling_the_wrapped_module() -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--nproc-per-node", "2", "--steps", "3",
                       "--select", "CC013", SCRIPTS / "cc013_bypass.py")
    [finding] = result.findings("CC013")
    assert (finding["severity"], finding["location"]["line"]) == ("error", 26)
    assert finding["evidence"]["ddp_in_source"] is True


def test_rank_dependent_call_is_located() -> None:
    other = {1: [1.5, 0.25], 2: [1.49, 0.26], 3: [1.4, 0.27]}
    rank0 = rank(0, SAME)
    # rank 0 clips its gradients before step 3; rank 1 never does
    at = next(i for i, e in enumerate(rank0) if e["ev"] == "step" and e["n"] == 3)
    rank0.insert(at, {"ev": "clip", "kind": "norm", "max_norm": 0.01, "loc": ["train.py", 17], "step": 2})
    [finding] = runtime(rank0, rank(1, other))
    assert finding.location.line == 17
    assert "`clip_grad_norm_` at train.py:17 ran a different number of times per rank (rank 0: 1, rank 1: 0)" \
        in finding.message


def test_the_cause_is_named_a_cast_after_wrapping_or_a_wrapper_never_built() -> None:
    def run(*flags: str) -> list[dict]:
        result = convcheck("run", "--nproc-per-node", "2", "--format", "json", "--fail-on", "never",
                           "--select", "CC013", SCRIPTS / "cc013_recast_after_wrap.py", *flags, cwd=SCRIPTS)
        assert result.code == 0, result.stdout + result.stderr
        return result.findings("CC013")

    assert run() == []
    [recast] = run("--bug")
    assert recast["location"]["line"] == 18
    assert "the model was moved or cast after DDP wrapped it (`double()` on the DistributedDataParallel" \
        in recast["message"]
    assert recast["evidence"]["moved_after_wrapping"] == "double() at cc013_recast_after_wrap.py:18"
    [unwrapped] = run("--cuda-only")
    assert "builds a DistributedDataParallel wrapper, but not on the path this run took" in unwrapped["message"]
    assert unwrapped["evidence"]["ddp_built_at_run_time"] is False
