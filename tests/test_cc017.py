"""CC017 training-data-not-shuffled: recorded label summaries, and a dict dataset stored in class blocks."""

from __future__ import annotations

import random

import pytest
import torch
from cc_testing import SCRIPTS, convcheck
from static_expect import context
from torch.utils.data import Dataset, Subset, TensorDataset

from convcheck.checks.cc017_training_data_not_shuffled import TrainingDataNotShuffled
from convcheck.runtime.recorders.labels import find_labels, stored_labels, summarize
from convcheck.runtime.trace import RunTrace, load_events

SOURCE = "import torch\n" * 20


def process(batches: list[list[int]], sampler: str = "SequentialSampler", trained: bool = True,
            stored: dict | None = None, shuffle: bool = False) -> list[dict]:
    """One process that drew ``batches`` (their labels) from loader 0 built at train.py:9."""
    events: list[dict] = [
        {"ev": "process", "rank": None, "world_size": 1},
        {"ev": "loader", "id": 0, "batch_size": len(batches[0]), "sampler": sampler, "batch_sampler": "BatchSampler",
         "batch_sampler_inner": sampler, "sampler_id": 0 if sampler == "DistributedSampler" else None,
         "dataset": "TensorDataset", "dataset_len": 1000, "loc": ["train.py", 9]},
    ]
    if sampler == "DistributedSampler":
        events.append({"ev": "sampler", "id": 0, "cls": sampler, "shuffle": shuffle, "loc": ["train.py", 8]})
    for i, labels in enumerate(batches, 1):
        extra = {"dataset": stored} if stored and i == 1 else {}
        events.append({"ev": "batch_labels", "loader": 0, "epoch": 1, "batch": i, "field": "[1]",
                       "step": i - 1 if trained else 0, **summarize(labels), **extra})
        events.append({"ev": "backward", "n": i, "step": i - 1, "loss": 1.0, "loc": ["train.py", 15]})
        if trained:
            events.append({"ev": "step", "opt": 0, "n": i, "grad": [0]})
    events.append({"ev": "loader_epoch", "loader": 0, "epoch": 1, "batches": len(batches),
                   "step": len(batches) if trained else 0, "step_start": 0, "complete": False})
    return events


def runtime(*procs: list[dict]) -> list:
    trace = RunTrace(processes=[load_events(e, pid=i + 1) for i, e in enumerate(procs)], world_size=len(procs))
    return list(TrainingDataNotShuffled().check_runtime(trace, context(SOURCE)))


SORTED = [[c] * 16 for c in (0, 0, 1, 1, 2, 2, 3, 3)]


def test_batches_of_one_class_each_drawn_in_stored_order_are_a_warning_at_the_loader() -> None:
    [finding] = runtime(process(SORTED))
    assert (finding.severity.value, finding.location.line) == ("warning", 9)
    assert finding.message.startswith(
        "This training DataLoader draws its samples in stored order (SequentialSampler: no shuffling), and the "
        "labels it drew come in blocks: 8 of 8 batches hold a single class (0, 0, 1, 1, 2, 2, 3, 3); labels changed "
        "3 times over 128 samples where the same classes shuffled would change about 95 times, and they never "
        "decrease (sorted by class).")
    assert finding.evidence["single_class_batches"] == 8
    assert finding.evidence["label_changes"] == 3
    assert finding.evidence["label_changes_if_shuffled"] == 95.2


CUDA_ONLY = """
import torch
use_cuda = torch.cuda.is_available()
kwargs = {"batch_size": 16}
if use_cuda:
    kwargs.update({"num_workers": 1, "shuffle": True})
loader = DataLoader(data, **kwargs)
"""


@pytest.mark.parametrize(("source", "line"), [
    (CUDA_ONLY, 6),
    ("cuda_kwargs = dict(shuffle=True) if args.cuda else {}\n", 1),
    (CUDA_ONLY.replace('"shuffle": True', '"shuffle": False'), None),
    (CUDA_ONLY.replace("if use_cuda:", "if args.workers:"), None),
])
def test_the_finding_says_when_the_script_shuffles_only_with_cuda(source: str, line: int | None) -> None:
    trace = RunTrace(processes=[load_events(process(SORTED))], world_size=1)
    [finding] = TrainingDataNotShuffled().check_runtime(trace, context(source))
    note = f"The script sets `shuffle=True` only where CUDA is available (line {line}), and this run had no CUDA."
    assert finding.message.endswith(note) == (line is not None)
    assert finding.evidence.get("shuffle_only_with_cuda_at") == (f"train.py:{line}" if line else None)


def test_blocks_smaller_than_a_batch_in_sorted_order_are_seen_too() -> None:
    # 10 classes of 20 samples each, sorted, batches of 32: every batch holds two or three classes.
    labels = [c for c in range(10) for _ in range(20)]
    batches = [labels[i:i + 32] for i in range(0, 192, 32)]
    [finding] = runtime(process(batches))
    assert finding.severity.value == "warning"
    assert finding.evidence["single_class_batches"] == 0
    assert finding.evidence["sorted"] is True


def test_data_already_mixed_drawn_in_stored_order_is_quiet() -> None:
    rng = random.Random(0)
    assert runtime(process([[rng.randrange(10) for _ in range(16)] for _ in range(8)])) == []
    # A very imbalanced but shuffled data set: 5 % positives.
    assert runtime(process([[int(rng.random() < 0.05) for _ in range(64)] for _ in range(8)])) == []


def test_shuffled_custom_or_evaluation_loaders_are_quiet() -> None:
    assert runtime(process(SORTED, sampler="RandomSampler")) == []
    assert runtime(process(SORTED, sampler="WeightedRandomSampler")) == []
    assert runtime(process(SORTED, trained=False)) == []


def test_a_distributed_sampler_that_does_not_shuffle_draws_in_stored_order() -> None:
    [finding] = runtime(process(SORTED, sampler="DistributedSampler", shuffle=False))
    assert finding.severity.value == "warning"
    assert "DistributedSampler: no shuffling" in finding.message
    assert runtime(process(SORTED, sampler="DistributedSampler", shuffle=True)) == []


def test_one_class_only_is_info_unless_the_dataset_says_it_holds_others() -> None:
    zeros = [[0] * 64 for _ in range(8)]
    [finding] = runtime(process(zeros))
    assert finding.severity.value == "info"
    assert "or a very imbalanced data set: the run cannot tell which" in finding.message

    stored = {"n": 60000, "classes": 10, "sum_sq": 0.1, "changes": 9, "counts": [[0, 6000]]}
    [finding] = runtime(process(zeros, stored=stored))
    assert finding.severity.value == "warning"
    assert "The dataset's 60000 labels (10 classes) change 9 times in stored order." in finding.message
    assert finding.evidence["label_changes_if_shuffled"] == 459.9

    one_class = {"n": 60000, "classes": 1, "sum_sq": 1.0, "changes": 0, "counts": [[0, 60000]]}
    assert runtime(process(zeros, stored=one_class)) == []


def test_too_few_batches_to_be_sure_is_info() -> None:
    [finding] = runtime(process([[0] * 16, [1] * 16]))
    assert finding.severity.value == "info"
    assert "Only 2 batches of 32 samples were seen: too few to be sure." in finding.message


def test_ranks_drawing_from_the_same_loader_give_one_finding() -> None:
    assert len(runtime(process(SORTED), process(SORTED))) == 1


def test_a_batch_summary() -> None:
    assert summarize([3, 3, 1, 1, 1, 2]) == {
        "n": 6, "distinct": 3, "majority": 1, "share": 0.5, "changes": 2, "run": 3, "first": 3, "last": 2,
        "sorted": False, "counts": [[1, 3], [3, 2], [2, 1]]}


INTEGER = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})


def test_the_labels_of_a_batch_are_its_integer_vector_as_long_as_the_batch() -> None:
    x, y, idx = torch.randn(4, 3), torch.tensor([1, 1, 0, 2]), torch.arange(4)
    assert find_labels([x, y], INTEGER)[0] == "[1]"
    assert find_labels({"index": idx, "label": y, "image": x}, INTEGER)[0] == "['label']"
    # Regression targets, token sequences and a lone id vector of another length are no class labels.
    assert find_labels([x, torch.randn(4)], INTEGER) is None
    assert find_labels([torch.randint(0, 9, (4, 16)), torch.randint(0, 9, (4, 16))], INTEGER) is None
    assert find_labels([x, torch.arange(5)], INTEGER) is None


def test_a_datasets_stored_labels_are_read_whole_through_subsets_without_a_sample() -> None:
    labels = torch.arange(3).repeat_interleave(4)  # 0 0 0 0 1 1 1 1 2 2 2 2
    data = TensorDataset(torch.randn(12, 2), labels)
    assert stored_labels(data, "[1]", torch) == {"n": 12, "classes": 3, "sum_sq": pytest.approx(1 / 3),
                                                 "changes": 2, "counts": [[0, 4], [1, 4], [2, 4]]}
    assert stored_labels(Subset(data, [0, 4, 8, 1]), "[1]", torch)["changes"] == 3
    assert stored_labels(data, "[0]", torch) is None  # float features

    class Listed(Dataset):
        def __init__(self) -> None:
            self.targets = [7, 7, 3]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> None:
            raise AssertionError("a sample was read")

    assert stored_labels(Listed(), "['label']", torch)["counts"] == [[7, 2], [3, 1]]


@pytest.mark.slow
def test_dict_samples_stored_in_class_blocks() -> None:
    script = SCRIPTS / "cc017_dict_blocks.py"
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC017", script,
                       cwd=script.parent)
    assert result.code == 0, result.stderr
    [finding] = result.findings("CC017")
    assert (finding["severity"], finding["location"]["line"]) == ("warning", 29)
    assert finding["evidence"]["labels_field"] == "['label']"
    assert finding["evidence"]["majority_label_per_batch"][:4] == [2, 2, 2, 0]
    assert finding["evidence"]["dataset_classes"] == 4

    shuffled = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC017", script, "--shuffle",
                         cwd=script.parent)
    assert shuffled.code == 0, shuffled.stderr
    assert shuffled.findings() == []
