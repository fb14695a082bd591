"""Which rows of which tensor a batch holds: the Tensor.__getitem__ patch, in this process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn as nn

from convcheck.runtime.patches import Patches
from convcheck.runtime.provenance import Provenance, loss_target


@pytest.fixture
def provenance() -> Iterator[Provenance]:
    patches, recorder = Patches(), Provenance()
    recorder.install(torch, patches)
    try:
        yield recorder
    finally:
        patches.undo_all()


def test_only_rows_drawn_by_an_integer_vector_are_recorded(provenance: Provenance) -> None:
    X, perm = torch.randn(64, 3), torch.randperm(64)
    x = X[perm[:8]]
    pick, index = provenance.find(x)
    assert index.tolist() == perm[:8].tolist() and pick.rows == 64
    assert pick.loc is not None and pick.loc[0] == __file__
    xn = X[np.arange(64)[5:9]]  # a numpy index vector
    assert provenance.find(xn)[1].tolist() == [5, 6, 7, 8]
    kept = [X[3], X[1:9], X[:, 0], X[X[:, 0] > 0], X[perm[:1]], torch.randn(8, 2)[perm[:4] % 8],
            nn.Parameter(torch.randn(64, 2))[perm[:8]], X[perm[:8].float().long().view(2, 4)]]
    assert [provenance.find(t) for t in kept] == [None] * len(kept)
    assert len(provenance.picks) == 2


def test_whole_rows_of_a_picked_tensor_keep_their_index(provenance: Provenance) -> None:
    X, perm = torch.randn(64, 3), torch.randperm(64)
    shuffled = X[perm]
    assert provenance.find(shuffled[8:16])[1].tolist() == perm[8:16].tolist()
    assert provenance.find(shuffled[8:16, 1:]) is None  # not whole rows
    assert provenance.find(shuffled[::2]) is None


def test_a_record_lives_as_long_as_its_batch(provenance: Provenance) -> None:
    X = torch.randn(64, 3)
    x = X[torch.tensor([1, 2, 3])]
    key = id(x)
    assert key in provenance.picks
    del x
    gc.collect()
    assert key not in provenance.picks
    stranger = torch.randn(3, 3)  # whatever id it gets, nothing was recorded for it
    assert provenance.find(stranger) is None


def test_a_source_keeps_its_token_and_a_new_tensor_gets_a_new_one(provenance: Provenance) -> None:
    X = torch.randn(64, 3)
    first = provenance.token(X)
    assert provenance.token(X) == first
    del X
    gc.collect()
    assert provenance.token(torch.randn(64, 3)) != first


def test_permutations_are_told_apart_from_other_index_vectors(provenance: Provenance) -> None:
    X, perm = torch.randn(32, 2), torch.randperm(32)
    described = provenance.describe(*provenance.find(X[perm[4:12]]))
    assert (described["permutation"], described["distinct"], described["n"], described["rows"]) == (True, True, 8, 32)
    assert described["head"] == perm[4:12].tolist()
    drawn = provenance.describe(*provenance.find(X[torch.tensor([1, 1, 5, 7])]))
    assert (drawn["permutation"], drawn["distinct"]) == (False, False)
    numpy_perm = np.random.default_rng(0).permutation(32)
    assert provenance.describe(*provenance.find(X[numpy_perm[:6]]))["permutation"] is True
    assert Provenance.same(perm[:4], perm[:4].clone()) and not Provenance.same(perm[:4], perm[1:5])


def test_recording_can_be_stopped(provenance: Provenance) -> None:
    X = torch.randn(64, 3)
    kept = X[torch.tensor([1, 2])]
    provenance.clear()
    assert provenance.find(kept) is None
    assert provenance.find(X[torch.tensor([1, 2])]) is None


def test_indexing_runs_as_without_the_patch_under_autograd_and_torch_compile(provenance: Provenance) -> None:
    weight, index = nn.Parameter(torch.randn(40, 3)), torch.tensor([3, 1, 3, 9])
    weight[index].sum().backward()
    assert weight.grad[3].tolist() == [2.0, 2.0, 2.0] and float(weight.grad.sum()) == 12.0

    def pick(a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return (a[i] * 2).sum(0)

    X, i = torch.randn(50, 4), torch.randperm(50)[:10]
    compiled = torch.compile(pick, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(X, i), pick(X, i))


def test_undo_gives_tensors_back_torchs_own_indexing() -> None:
    assert "__getitem__" not in vars(torch.Tensor)
    patches = Patches()
    Provenance().install(torch, patches)
    assert "__getitem__" in vars(torch.Tensor)
    patches.undo_all()
    assert "__getitem__" not in vars(torch.Tensor)


def test_the_target_is_read_from_the_loss_graph() -> None:
    out, y = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 2, 1, 0])
    assert loss_target(nn.functional.cross_entropy(out, y).grad_fn) is y
    target = torch.randn(4, 3)
    assert loss_target((nn.functional.mse_loss(out, target) * 2).grad_fn) is target
    assert loss_target(out.sum().grad_fn) is None
