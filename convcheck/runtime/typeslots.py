"""Keep a patched ``Tensor.__getitem__`` from turning tensors into Python sequences.

Assigning ``__getitem__`` on a class in Python fills two type slots, the mapping one and the
sequence one (``sq_item``), and deleting it again leaves the sequence slot filled. ``torch.Tensor``
has no sequence slot, and torch's factories ask ``PySequence_Check`` to tell nested lists from
tensors: with the slot filled, ``torch.tensor([t])`` for a 0-d ``t`` calls ``len(t)`` and fails.
Emptying the slot again keeps indexing going through the patch (the mapping slot) and leaves
the factories as they were. Only heap types whose layout is the one read here are touched.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

_WORD = ctypes.sizeof(ctypes.c_void_p)
#: PyTypeObject, in words: ob_refcnt, ob_type, ob_size, tp_name, tp_basicsize, tp_itemsize, tp_dealloc,
#: tp_vectorcall_offset, tp_getattr, tp_setattr, tp_as_async, tp_repr, tp_as_number, tp_as_sequence.
_BASICSIZE, _ITEMSIZE, _AS_SEQUENCE = 4, 5, 13
#: PySequenceMethods: sq_length, sq_concat, sq_repeat, sq_item.
_SQ_ITEM = 3
_HEAPTYPE = 1 << 9
#: Dunders whose assignment fills a sequence slot besides the one the class had.
SEQUENCE_DUNDERS = frozenset({"__getitem__"})


def _sequence_methods(cls: type) -> int | None:
    """The address of a heap type's PySequenceMethods, or None where the layout is not the one known here."""
    if sys.implementation.name != "cpython" or not isinstance(cls, type) or not cls.__flags__ & _HEAPTYPE:
        return None
    words = ctypes.cast(ctypes.c_void_p(id(cls)), ctypes.POINTER(ctypes.c_ssize_t))
    # The sizes sit at known places in the header: if they read back right, so does the rest.
    if words[_BASICSIZE] != cls.__basicsize__ or words[_ITEMSIZE] != cls.__itemsize__:
        return None
    return words[_AS_SEQUENCE] or None


def sequence_item_empty(cls: type) -> bool | None:
    """Whether ``cls``'s sequence item slot is empty (its instances are no sequences); None: layout unknown."""
    methods = _sequence_methods(cls)
    if methods is None:
        return None
    return not ctypes.c_void_p.from_address(methods + _SQ_ITEM * _WORD).value


def empty_sequence_item(cls: type) -> bool:
    """Empty ``cls``'s sequence item slot; False (nothing written) where its layout is not known."""
    methods = _sequence_methods(cls)
    if methods is None:
        return False
    ctypes.c_void_p.from_address(methods + _SQ_ITEM * _WORD).value = None
    return True


def is_sequence(obj: Any) -> bool:
    """``PySequence_Check(obj)``: what torch's factories ask of each element of a nested list."""
    check = ctypes.pythonapi.PySequence_Check
    check.argtypes, check.restype = [ctypes.py_object], ctypes.c_int
    return bool(check(obj))
