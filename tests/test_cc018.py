"""CC018 ranks-different-data: recorded dataset digests, the digests of real datasets, and a file list each rank
shuffles for itself."""

from __future__ import annotations

import pytest
import torch
from cc_testing import SCRIPTS, convcheck
from static_expect import context
from torch.utils.data import ConcatDataset, Dataset, TensorDataset, random_split

from convcheck.checks.cc018_ranks_different_data import RanksDifferentData, _sketch_overlap
from convcheck.runtime.recorders.datasets import DatasetRecorder, _hash

SOURCE = """
import random
import torch
from torch.utils.data import random_split
train, test = random_split(data, [80, 20])
random.shuffle(files)
"""


def indices(values: list[int], path: str = "dataset.indices") -> dict:
    return {"path": path, "kind": "subset_indices", "n": len(values), "digest": _hash(repr(values)),
            "set_digest": _hash(repr(sorted(values))), "indices": values}


def names(values: list[str], path: str = "dataset.files") -> dict:
    texts = [repr(v) for v in values]
    return {"path": path, "kind": "names", "n": len(values), "digest": _hash(repr(texts)),
            "set_digest": _hash(repr(sorted(texts))), "head": values[:3],
            "sketch": sorted({_hash(t) for t in texts})[:64]}


def tensor(seed: int) -> dict:
    return {"path": "dataset.tensors[0]", "kind": "tensor", "n": 100, "digest": f"{seed:016x}", "set_digest": None}


def rank(r: int, parts: list[dict], sampler: str = "DistributedSampler", world: int = 2) -> list[dict]:
    return [{"ev": "process", "rank": r, "world_size": world},
            {"ev": "dist_init", "rank": r, "world_size": world, "backend": "gloo"},
            {"ev": "loader", "id": 0, "batch_size": 8, "sampler": sampler, "batch_sampler": "BatchSampler",
             "batch_sampler_inner": sampler, "dataset": "Subset", "dataset_len": 80, "loc": ["train.py", 12]},
            {"ev": "dataset_digest", "loader": 0, "cls": "Subset", "len": parts[0]["n"], "parts": parts},
            {"ev": "backward", "n": 1, "step": 0, "loss": 1.0, "loc": ["train.py", 20]},
            {"ev": "step", "opt": 0, "n": 1, "grad": [0]}]


def runtime(*ranks: list[dict], source: str = SOURCE) -> list:
    from convcheck.runtime.trace import RunTrace, load_events

    trace = RunTrace(processes=[load_events(e, pid=i + 1) for i, e in enumerate(ranks)], world_size=len(ranks))
    return list(RanksDifferentData().check_runtime(trace, context(source)))


def test_subsets_of_the_same_data_that_differ_between_ranks_are_an_error_at_the_split() -> None:
    a, b = list(range(0, 80)), list(range(20, 100))
    [finding] = runtime(rank(0, [indices(a), tensor(1)]), rank(1, [indices(b), tensor(1)]))
    assert (finding.severity.value, finding.location.line) == ("error", 5)
    assert finding.message == (
        "Ranks 0 and 1 hold different subsets of the same data in this DataLoader's dataset (`dataset.indices`, 80 "
        "samples each): they share 60 of 80 indices. The split was drawn separately on each rank (a random_split "
        "without a seeded generator draws a different one on every rank), so each rank trains on samples the "
        "others hold out.")
    assert finding.evidence["loader_built_at"] == "train.py:12"
    # Without the split in the source, the finding points at the loader.
    [elsewhere] = runtime(rank(0, [indices(a)]), rank(1, [indices(b)]), source="x = 1\n")
    assert elsewhere.location.line == 12


def test_equal_disjoint_or_differently_sized_subsets_are_quiet() -> None:
    same = list(range(80))
    assert runtime(rank(0, [indices(same)]), rank(1, [indices(same)])) == []
    # A deliberate shard per rank shares nothing.
    assert runtime(rank(0, [indices(list(range(0, 100, 2)))]), rank(1, [indices(list(range(1, 100, 2)))])) == []
    assert runtime(rank(0, [indices(list(range(80)))]), rank(1, [indices(list(range(70)))])) == []
    assert runtime(rank(0, [indices(same)], world=1)) == []


def test_the_same_subset_in_another_order_matters_only_to_a_distributed_sampler() -> None:
    a = list(range(80))
    [finding] = runtime(rank(0, [indices(a)]), rank(1, [indices(a[::-1])]))
    assert finding.severity.value == "warning"
    assert "list the same 80 samples" in finding.message
    assert runtime(rank(0, [indices(a)], sampler="RandomSampler"),
                   rank(1, [indices(a[::-1])], sampler="RandomSampler")) == []


def test_file_lists_that_differ_between_ranks_are_a_warning_at_the_shuffle() -> None:
    files = [f"f{i}.png" for i in range(100)]
    [finding] = runtime(rank(0, [names(files[:80])]), rank(1, [names(files[20:])]))
    assert (finding.severity.value, finding.location.line) == ("warning", 6)
    assert 0.4 < finding.evidence["estimated_shared_share"] < 0.9
    # Disjoint lists: a shard per rank.
    assert runtime(rank(0, [names(files[:50])]), rank(1, [names(files[50:])])) == []


def test_an_evaluation_subset_drawn_per_rank_is_quiet() -> None:
    a, b = list(range(0, 80)), list(range(20, 100))
    ranks = [rank(0, [indices(a)]), rank(1, [indices(b)])]
    for events in ranks:
        events.append({"ev": "loader_epoch", "loader": 0, "epoch": 1, "batches": 3, "step": 1, "step_start": 1})
    assert runtime(*ranks) == []
    for events in ranks:
        events[-1]["step_start"] = 0
    assert len(runtime(*ranks)) == 1


def test_datasets_that_differ_only_in_their_tensors_are_quiet() -> None:
    # Synthetic data drawn separately on each rank (a tutorial's random dataset) is no split.
    assert runtime(rank(0, [tensor(1)]), rank(1, [tensor(2)])) == []


def test_sketch_overlap_estimates_the_shared_share() -> None:
    a = sorted({_hash(str(i)) for i in range(1000)})[:64]
    b = sorted({_hash(str(i)) for i in range(500, 1500)})[:64]
    assert _sketch_overlap(a, a) == 1.0
    assert 0.15 < _sketch_overlap(a, b) < 0.55  # Jaccard 500/1500
    assert _sketch_overlap(a, []) == 0.0


class _Untouchable(Dataset):
    """A dataset whose samples must not be read by the recorder."""

    def __init__(self) -> None:
        self.files = [f"img_{i}.jpg" for i in range(50)]

    def __len__(self) -> int:
        return 50

    def __getitem__(self, i: int) -> None:
        raise AssertionError("the recorder read a sample")


def _digest(dataset: Dataset) -> list[dict]:
    recorder = DatasetRecorder(probe=None)
    recorder._torch = torch
    parts: list[dict] = []
    recorder._digest(dataset, "dataset", parts, 0)
    return parts


def test_the_recorder_digests_splits_and_lists_without_reading_a_sample() -> None:
    data = TensorDataset(torch.arange(100.0), torch.arange(100) % 3)
    seeded = [_digest(random_split(data, [80, 20], generator=torch.Generator().manual_seed(0))[0]) for _ in range(2)]
    assert seeded[0] == seeded[1]
    other = _digest(random_split(data, [80, 20], generator=torch.Generator().manual_seed(1))[0])
    assert [p["path"] for p in other] == ["dataset.indices", "dataset.dataset.tensors[0]", "dataset.dataset.tensors[1]"]
    assert other[0]["digest"] != seeded[0][0]["digest"] and other[1:] == seeded[0][1:]

    parts = _digest(ConcatDataset([_Untouchable(), _Untouchable()]))
    assert [(p["path"], p["kind"], p["n"], p["head"][0]) for p in parts] == [
        ("dataset.datasets[0].files", "names", 50, "img_0.jpg"),
        ("dataset.datasets[1].files", "names", 50, "img_0.jpg")]


@pytest.mark.slow
def test_a_file_list_shuffled_by_each_rank() -> None:
    script = SCRIPTS / "cc018_shuffled_files.py"
    args = ("run", "--format", "json", "--fail-on", "never", "--select", "CC018", "--nproc-per-node", "2",
            "--steps", "4")
    result = convcheck(*args, script, cwd=script.parent)
    assert result.code == 0, result.stderr
    [finding] = result.findings("CC018")
    assert (finding["severity"], finding["location"]["line"]) == ("warning", 34)
    assert finding["evidence"]["dataset_part"] == "dataset.files"
    assert finding["evidence"]["loader_built_at"].endswith("cc018_shuffled_files.py:40")

    kept = convcheck(*args, script, "--sorted", cwd=script.parent)
    assert kept.code == 0, kept.stderr
    assert kept.findings() == []
