"""Where a batch came from: the rows of which tensor, picked by which index vector, at which line.

A hand-written loop draws its batches by indexing tensors with an integer vector
(``X[perm[i:i + B]]``, the vector a torch tensor or a numpy array). torch offers no hook for
indexing, so ``Tensor.__getitem__`` is patched; every other call (slices, ints, masks, tensor
subclasses such as Parameter or torch.compile's fake tensors) returns after a few type checks,
before any of the patch machinery runs. What is recorded lives exactly as long as the batch it
describes: it is keyed by the batch's id and dropped by a weak reference's callback, which runs
before that id can be reused.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

from convcheck.runtime.locate import user_location
from convcheck.runtime.patches import Patches

#: Only tensors with at least this many rows count as a data set to draw batches from.
_MIN_ROWS = 16
#: Live picks kept at most: a script that keeps thousands of batches alive is not drawing them per step.
_MAX_PICKS = 4096
#: Index bases up to this length are checked for being a permutation (one bincount, once per base).
_MAX_PERMUTATION = 1 << 24
#: Leading index values written to the trace.
_SHOWN = 8


class Pick:
    """One ``source[index]``: which tensor (by token), how many rows it had, the index, the user's line."""

    __slots__ = ("source", "rows", "index", "loc")

    def __init__(self, source: int, rows: int, index: Any, loc: list[Any] | None) -> None:
        self.source = source
        self.rows = rows
        #: A 1-D integer torch tensor or numpy array; a view keeps the vector it was sliced from.
        self.index = index
        self.loc = loc


class Provenance:
    """Records which rows of which tensor each integer-indexed batch holds."""

    def __init__(self) -> None:
        self.picks: dict[int, tuple[Any, Pick]] = {}
        self.active = True
        self._tokens: dict[int, tuple[Any, int]] = {}
        self._count = 0
        self._permutations: dict[int, bool] = {}
        self._tensor: Any = None
        self._integer: frozenset[Any] = frozenset()
        self._array: Any = None

    def install(self, torch: Any, patches: Patches) -> None:
        """Patch ``Tensor.__getitem__``: torch has no hook for indexing."""
        tensor = self._tensor = torch.Tensor
        self._integer = frozenset({torch.int64, torch.int32, torch.int16, torch.int8})
        integer = self._integer
        numpy = sys.modules.get("numpy")
        array = self._array = getattr(numpy, "ndarray", tensor)
        provenance = self

        # Exact types only: subclasses (Parameter, FakeTensor under torch.compile, user subclasses),
        # masks and every other index (ints, slices, tuples, lists) go straight to torch.
        def wanted(source: Any, index: Any, *rest: Any) -> bool:
            if type(source) is not tensor or not provenance.active:
                return False
            return (type(index) is tensor and index.dtype in integer) or type(index) is array

        def make(original: Any) -> Any:
            def __getitem__(source: Any, index: Any) -> Any:
                result = original(source, index)
                provenance.note(source, index, result)
                return result

            return __getitem__

        patches.wrap(tensor, "__getitem__", make, when=wanted)

    def note(self, source: Any, index: Any, result: Any) -> None:
        """Remember ``result = source[index]`` when it draws rows with an integer vector."""
        if type(index) is self._tensor:
            if index.dim() != 1 or index.dtype not in self._integer:
                return
        elif index.ndim != 1 or index.dtype.kind != "i":
            return
        if source.dim() == 0:
            return
        if index.shape[0] < 2 or source.shape[0] < _MIN_ROWS or type(result) is not self._tensor:
            return
        if len(self.picks) >= _MAX_PICKS:
            return
        key = id(result)
        picks = self.picks

        def forget(ref: Any) -> None:
            entry = picks.get(key)
            if entry is not None and entry[0] is ref:
                del picks[key]

        picks[key] = (weakref.ref(result, forget), Pick(self.token(source), int(source.shape[0]), index,
                                                        _user_loc()))

    def token(self, tensor: Any) -> int:
        """A number that names this tensor object for as long as it lives (ids are reused, tokens are not)."""
        key = id(tensor)
        entry = self._tokens.get(key)
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        tokens = self._tokens

        def forget(ref: Any) -> None:
            found = tokens.get(key)
            if found is not None and found[0] is ref:
                del tokens[key]

        self._count += 1
        tokens[key] = (weakref.ref(tensor, forget), self._count)
        return self._count

    def find(self, tensor: Any) -> tuple[Pick, Any] | None:
        """The pick that made ``tensor`` and the index of its rows, or None.

        A run of whole rows of a picked tensor counts too: ``Xs[i:i + B]`` of ``Xs = X[perm]``
        holds the rows ``perm[i:i + B]`` of ``X``.
        """
        if not self.picks or type(tensor) is not self._tensor:
            return None
        entry = self.picks.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1], entry[1].index
        base = tensor._base
        entry = self.picks.get(id(base)) if base is not None else None
        if entry is None or entry[0]() is not base:
            return None
        if tensor.dim() != base.dim() or tensor.dim() == 0 or tensor.shape[1:] != base.shape[1:]:
            return None
        if tensor.stride() != base.stride() or base.stride(0) <= 0:
            return None
        start, rest = divmod(tensor.storage_offset() - base.storage_offset(), base.stride(0))
        if rest or start < 0:
            return None
        return entry[1], entry[1].index[start:start + tensor.shape[0]]

    def describe(self, pick: Pick, index: Any) -> dict[str, Any]:
        """What the trace says about one pick: source, rows, the index's base and whether it is a permutation."""
        import torch

        base = _base(index)
        n = int(index.shape[0])
        values = _values(index)
        distinct = n <= _MAX_PICKS and int(torch.unique(values).numel()) == n
        return {"source": pick.source, "rows": pick.rows, "n": n, "base": self.token(base),
                "permutation": self._is_permutation(base, pick.rows), "distinct": distinct,
                "head": values[:_SHOWN].tolist(), "loc": pick.loc}

    def _is_permutation(self, base: Any, rows: int) -> bool:
        """Whether ``base`` holds each of 0..rows-1 exactly once (cached per base tensor)."""
        token = self.token(base)
        known = self._permutations.get(token)
        if known is None:
            known = False
            if len(base.shape) == 1 and base.shape[0] == rows <= _MAX_PERMUTATION:
                import torch

                values = _values(base)
                if int(values.min()) >= 0 and int(values.max()) < rows:
                    known = bool(torch.bincount(values, minlength=rows).max() == 1)
            self._permutations[token] = known
        return known

    @staticmethod
    def same(a: Any, b: Any) -> bool:
        """Whether two index vectors pick the same rows in the same order."""
        return a.shape == b.shape and _values(a).equal(_values(b))

    def clear(self) -> None:
        """Stop recording and forget every pick."""
        self.active = False
        self.picks.clear()


def _base(index: Any) -> Any:
    """The vector an index was sliced from (``perm`` for ``perm[i:i + B]``), else the index itself."""
    base = index._base if hasattr(index, "_base") else index.base
    return index if base is None else base


def _values(index: Any) -> Any:
    """An index vector as a CPU int64 torch tensor (a numpy array is copied: it may be read-only)."""
    import torch

    if hasattr(index, "_base"):
        return index.detach().cpu().long()
    return torch.from_numpy(index.astype("int64", copy=True))


def _user_loc() -> list[Any] | None:
    found = user_location(3)
    return [found[0], found[1]] if found else None


def loss_target(grad_fn: Any, nodes: int = 6) -> Any:
    """The target tensor the loss saved (cross-entropy, NLL, MSE, BCE, smooth L1...), from the nodes nearest it."""
    queue, seen = [grad_fn], 0
    while queue and seen < nodes:
        fn = queue.pop(0)
        if fn is None:
            continue
        seen += 1
        try:
            return fn._saved_target
        except (AttributeError, RuntimeError):
            pass
        queue.extend(next_fn for next_fn, _ in getattr(fn, "next_functions", ()))
    return None
