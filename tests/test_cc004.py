"""CC004 sampler-epoch-not-set: static snippets, recorded traces, and scripts written in other styles."""

from __future__ import annotations

import pytest
from cc_testing import SCRIPTS, convcheck
from static_expect import context, expected, static_findings

from convcheck.checks.cc004_sampler_epoch_not_set import SamplerEpochNotSet
from convcheck.runtime.trace import RunTrace, load_events

# -- static --------------------------------------------------------------------------------------

STATIC_CASES = {
    "no_set_epoch": """
        from torch.utils.data import DataLoader, DistributedSampler
        sampler = DistributedSampler(data)
        loader = DataLoader(data, sampler=sampler)
        for epoch in range(3):  # expect: CC004 warning
            for batch in loader:
                pass
    """,
    "qualified_name": """
        import torch.utils.data as tud
        loader = tud.DataLoader(data, sampler=tud.distributed.DistributedSampler(data, shuffle=True))  # expect: CC004 warning
    """,
    "alias": """
        from torch.utils.data.distributed import DistributedSampler as DS
        s = DS(data, num_replicas=2, rank=0)  # expect: CC004 warning
    """,
    "set_epoch_called": """
        from torch.utils.data import DistributedSampler
        sampler = DistributedSampler(data)
        for epoch in range(3):
            sampler.set_epoch(epoch)
    """,
    "set_epoch_through_loader": """
        from torch.utils.data import DataLoader, DistributedSampler
        loader = DataLoader(data, sampler=DistributedSampler(data))
        for epoch in range(3):
            loader.sampler.set_epoch(epoch)
    """,
    "set_epoch_through_batch_sampler": """
        from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
        loader = DataLoader(data, batch_sampler=BatchSampler(DistributedSampler(data), 8, False))
        for epoch in range(3):
            loader.batch_sampler.sampler.set_epoch(epoch)
    """,
    "no_shuffle": """
        from torch.utils.data import DistributedSampler
        val_sampler = DistributedSampler(data, shuffle=False)
    """,
    "not_a_distributed_sampler": """
        from torch.utils.data import RandomSampler
        sampler = RandomSampler(data)
    """,
}


@pytest.mark.parametrize("name", sorted(STATIC_CASES))
def test_static(name: str) -> None:
    source = STATIC_CASES[name]
    assert static_findings(SamplerEpochNotSet(), source) == expected(source)


def test_static_finding_waits_for_the_run() -> None:
    check = SamplerEpochNotSet()
    check.runtime_follows = True
    assert list(check.check_static(context(STATIC_CASES["no_set_epoch"]))) == []
    # No runtime evidence: the static finding comes back from the runtime pass, once.
    found = list(check.check_runtime(RunTrace(processes=[]), context(STATIC_CASES["no_set_epoch"])))
    assert [(f.severity.value, f.source, f.location.line) for f in found] == [("warning", "static", 5)]


# -- runtime on recorded traces ---------------------------------------------------------------------

LOC = ["train.py", 12]


def rank_events(rank: int, iters: list[tuple[int, str]], set_epochs: list[int] = (), shuffle: bool = True,
                world: int = 2) -> list[dict]:
    events = [
        {"ev": "process", "rank": rank, "world_size": world},
        {"ev": "dist_init", "rank": rank, "world_size": world, "backend": "gloo"},
        {"ev": "sampler", "id": 0, "cls": "DistributedSampler", "shuffle": shuffle, "num_replicas": world,
         "rank": rank, "seed": 0, "loc": LOC},
        {"ev": "loader", "id": 0, "batch_size": 8, "sampler": "DistributedSampler", "batch_sampler": "BatchSampler",
         "batch_sampler_inner": "DistributedSampler", "sampler_id": 0, "dataset_len": 64, "loc": ["train.py", 13]},
    ]
    step = 0
    for number, (epoch, digest) in enumerate(iters):
        if number < len(set_epochs):
            events.append({"ev": "set_epoch", "id": 0, "epoch": set_epochs[number], "loc": ["train.py", 17]})
        events.append({"ev": "sampler_iter", "id": 0, "epoch": epoch, "digest": digest, "n": 32, "step": step})
        events += [{"ev": "step", "opt": 0, "n": step + 1, "backwards": 1, "lrs": [0.1]},
                   {"ev": "step", "opt": 0, "n": step + 2, "backwards": 1, "lrs": [0.1]}]
        events.append({"ev": "loader_epoch", "loader": 0, "epoch": number + 1, "batches": 2, "n_indices": 16,
                       "digest": "x", "indices": list(range(rank * 16, rank * 16 + 16)), "complete": False,
                       "step": step + 2, "step_start": step, "first_batch": f"[8, 8]:{rank}.0"})
        step += 2
    return events


def runtime(trace: RunTrace) -> list:
    return list(SamplerEpochNotSet().check_runtime(trace, context("")))


def test_same_order_every_epoch_is_an_error() -> None:
    trace = RunTrace(processes=[load_events(rank_events(r, [(0, "aa"), (0, "aa"), (0, "aa")]), pid=r + 1)
                                for r in range(2)], world_size=2)
    [finding] = runtime(trace)
    assert finding.severity.value == "error"
    assert (finding.location.path, finding.location.line) == ("train.py", 12)
    assert finding.evidence["sampler_epoch_each_time"] == [0, 0, 0]
    assert finding.evidence["index_digests"] == ["aa", "aa", "aa"]
    assert finding.evidence["set_epoch_calls"] == []
    assert "set_epoch was never called" in finding.message
    assert "train.py:12" in finding.message


def test_set_epoch_with_a_constant_is_reported() -> None:
    events = rank_events(0, [(0, "aa"), (0, "aa")], set_epochs=[0, 0])
    [finding] = runtime(RunTrace(processes=[load_events(events)]))
    assert "always with 0" in finding.message
    assert [c["epoch"] for c in finding.evidence["set_epoch_calls"]] == [0, 0]


def test_set_epoch_every_epoch_is_quiet() -> None:
    events = rank_events(0, [(0, "aa"), (1, "bb"), (2, "cc")], set_epochs=[0, 1, 2])
    assert runtime(RunTrace(processes=[load_events(events)])) == []


def test_shuffle_false_is_quiet() -> None:
    events = rank_events(0, [(0, "aa"), (0, "aa")], shuffle=False)
    assert runtime(RunTrace(processes=[load_events(events)])) == []


def test_one_epoch_only_is_quiet() -> None:
    assert runtime(RunTrace(processes=[load_events(rank_events(0, [(0, "aa")]))])) == []


def test_evaluation_loader_is_quiet() -> None:
    events = rank_events(0, [(0, "aa"), (0, "aa")])
    for event in events:
        if event["ev"] == "loader_epoch":
            event["step_start"] = event["step"]  # no optimizer step ran while it was iterated
    assert runtime(RunTrace(processes=[load_events(events)])) == []


def test_sampler_rebuilt_every_epoch_at_one_line() -> None:
    events = rank_events(0, [(0, "aa")])
    events += [{"ev": "sampler", "id": 1, "cls": "DistributedSampler", "shuffle": True, "loc": LOC},
               {"ev": "sampler_iter", "id": 1, "epoch": 0, "digest": "aa", "n": 32, "step": 2}]
    [finding] = runtime(RunTrace(processes=[load_events(events)]))
    assert finding.location.line == 12


def test_runtime_and_static_make_one_finding() -> None:
    source = STATIC_CASES["no_set_epoch"]
    check = SamplerEpochNotSet()
    ctx = context(source)
    check.runtime_follows = True
    assert list(check.check_static(ctx)) == []
    events = rank_events(0, [(0, "aa"), (0, "aa")])
    for event in events:
        if event.get("loc") == LOC:
            event["loc"] = ["train.py", 3]
    [finding] = check.check_runtime(RunTrace(processes=[load_events(events)]), ctx)
    # Located at the epoch loop, where set_epoch goes; the sampler's line is in the evidence.
    assert (finding.severity.value, finding.source, finding.location.line) == ("error", "static+runtime", 5)
    assert finding.evidence["sampler_built_at"] == "train.py:3" and finding.evidence["epoch_loop_at"] == "train.py:5"


def overlap_events(rank: int, indices: list[int], sampler: str = "RandomSampler", first_batch: str = "same") -> list:
    return [
        {"ev": "process", "rank": rank, "world_size": 2},
        {"ev": "dist_init", "rank": rank, "world_size": 2},
        {"ev": "loader", "id": 0, "batch_size": 4, "sampler": sampler, "batch_sampler": "BatchSampler",
         "batch_sampler_inner": sampler, "sampler_id": None, "dataset_len": 64, "loc": ["train.py", 20]},
        {"ev": "step", "opt": 0, "n": 1, "backwards": 1, "lrs": [0.1]},
        {"ev": "loader_epoch", "loader": 0, "epoch": 1, "batches": 2, "n_indices": len(indices), "digest": str(indices),
         "indices": indices, "complete": False, "step": 2, "step_start": 0, "first_batch": first_batch},
    ]


def test_ranks_with_identical_batches() -> None:
    same = [5, 3, 9, 1, 7, 2, 8, 0]
    trace = RunTrace(processes=[load_events(overlap_events(r, same), pid=r + 1) for r in range(2)], world_size=2)
    [finding] = runtime(trace)
    assert (finding.severity.value, finding.location.line) == ("error", 20)
    assert finding.evidence["shared_indices"] == 8 and finding.evidence["ranks"] == [0, 1]


def test_per_rank_shards_with_equal_indices_are_quiet() -> None:
    same = [0, 1, 2, 3, 4, 5, 6, 7]
    trace = RunTrace(processes=[load_events(overlap_events(r, same, first_batch=f"rank{r}"), pid=r + 1)
                                for r in range(2)])
    assert runtime(trace) == []


def test_ranks_with_partly_shared_samples() -> None:
    trace = RunTrace(processes=[load_events(overlap_events(0, [1, 2, 3, 4, 5, 6, 7, 8]), pid=1),
                                load_events(overlap_events(1, [1, 2, 3, 40, 50, 60, 61, 62]), pid=2)])
    [finding] = runtime(trace)
    assert finding.severity.value == "warning" and finding.evidence["shared_indices"] == 3


def test_distributed_sampler_split_is_quiet() -> None:
    trace = RunTrace(processes=[
        load_events(overlap_events(0, [0, 2, 4, 6], sampler="DistributedSampler", first_batch="a"), pid=1),
        load_events(overlap_events(1, [1, 3, 5, 7], sampler="DistributedSampler", first_batch="b"), pid=2),
    ])
    assert runtime(trace) == []


def test_single_process_is_quiet() -> None:
    assert runtime(RunTrace(processes=[load_events(overlap_events(0, [1, 2, 3]))])) == []


# -- end to end, scripts in other styles -------------------------------------------------------------

@pytest.mark.parametrize(("script", "line"), [("cc004_spawn_trainer.py", 23), ("cc004_spawn_trainer_fixed.py", None)])
def test_spawned_trainer_class(script: str, line: int | None) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC004", "--steps", "6",
                       "--max-batches-per-epoch", "2", SCRIPTS / script)
    assert result.code == 0, result.stderr
    found = [(f["severity"], f["location"]["line"]) for f in result.findings("CC004")]
    assert found == ([("error", line)] if line else [])


def test_analysis_tells_the_check_whether_a_run_follows() -> None:
    from convcheck.analysis import run_checks

    ctx = context(STATIC_CASES["no_set_epoch"])
    alone, _ = run_checks([SamplerEpochNotSet()], ctx, None, runtime=False)
    assert [(f.source, f.severity.value) for f in alone] == [("static", "warning")]
    events = rank_events(0, [(0, "aa"), (0, "aa")])
    for event in events:
        if event.get("loc") == LOC:
            event["loc"] = ["train.py", 3]
    both, _ = run_checks([SamplerEpochNotSet()], ctx, RunTrace(processes=[load_events(events)]))
    assert [(f.source, f.severity.value) for f in both] == [("static+runtime", "error")]


def test_run_that_saw_the_epoch_change_clears_the_static_warning() -> None:
    # set_epoch called from code the static pass cannot see (a helper module, a library).
    ctx = context(STATIC_CASES["no_set_epoch"])
    check = SamplerEpochNotSet()
    check.runtime_follows = True
    check.check_static(ctx)
    events = rank_events(0, [(0, "aa"), (1, "bb")], set_epochs=[0, 1])
    for event in events:
        if event.get("loc") == LOC:
            event["loc"] = ["train.py", 3]
    assert list(check.check_runtime(RunTrace(processes=[load_events(events)]), ctx)) == []


def test_loaders_are_matched_across_ranks_by_where_they_were_built() -> None:
    same = [5, 3, 9, 1, 7, 2, 8, 0]
    first = overlap_events(0, same)
    # Rank 1 built an extra loader first: its training loader has id 1.
    second = overlap_events(1, same)
    second.insert(2, {"ev": "loader", "id": 0, "batch_size": 4, "sampler": "SequentialSampler", "loc": ["x.py", 1]})
    for event in second[3:]:
        if event["ev"] in ("loader",):
            event["id"] = 1
        if event["ev"] == "loader_epoch":
            event["loader"] = 1
    [finding] = runtime(RunTrace(processes=[load_events(first, pid=1), load_events(second, pid=2)]))
    assert finding.severity.value == "error"


def test_careful_trainer_gets_no_finding_from_cc001_cc004_cc005(tmp_path) -> None:  # noqa: ANN001
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC001,CC004,CC005",
                       "--nproc-per-node", "2", "--steps", "6", "--max-batches-per-epoch", "2",
                       SCRIPTS / "ddp_trainer_clean.py", "--epochs", "4", "--out", str(tmp_path / "model.pt"))
    assert result.code == 0, result.stderr
    assert result.report["run"]["status"] == "stopped-at-budget"
    assert result.findings() == []


def test_a_peek_at_one_batch_before_training_is_not_an_epoch() -> None:
    def run(*flags: str) -> list[dict]:
        result = convcheck("run", "--nproc-per-node", "2", "--steps", "8", "--max-batches-per-epoch", "2",
                           "--format", "json", "--fail-on", "never", "--select", "CC004",
                           SCRIPTS / "cc004_peek_then_train.py", *flags)
        assert result.code == 0, result.stdout + result.stderr
        return result.findings("CC004")

    assert run() == []
    [finding] = run("--bug")
    assert finding["severity"] == "error"
    assert "drew 4 epochs in the same order" in finding["message"]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("s = DistributedSampler(d)\nloader = DataLoader(d, sampler=s)\nfor epoch in range(3):\n    for b in loader:\n"
         "        pass\n", 3),
        ("loader = DataLoader(d, sampler=DistributedSampler(d))\ndef main():\n    while True:\n        train(loader)\n", 3),
        ("s = DistributedSampler(d)\nloader = DataLoader(d, batch_sampler=BatchSampler(s, 8, False))\n"
         "for epoch in range(3):\n    evaluate()\n    for b in loader:\n        pass\n", 3),
        ("s = DistributedSampler(d)\nloader = DataLoader(d, sampler=s)\nfor b in loader:\n    pass\n", None),
        ("class T:\n    def __init__(self):\n        self.loader = DataLoader(d, sampler=DistributedSampler(d))\n"
         "    def epoch(self):\n        for b in self.loader:\n            pass\n", None),
    ],
    ids=["nested-for", "while-calling-a-function", "batch-sampler", "no-epoch-loop", "class"],
)
def test_epoch_loop_of_a_sampler(source: str, line: int | None) -> None:
    from convcheck.checks.cc004_sampler_epoch_not_set import epoch_loop

    sampler_line = next(n for n, text in enumerate(source.splitlines(), 1) if "DistributedSampler(" in text)
    assert epoch_loop(context(source), sampler_line) == line
