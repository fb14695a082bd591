"""Structural comparison of two payloads: what was written, read back, against what was meant."""

from __future__ import annotations

from typing import Any, Callable

from convcheck.statedict.key_plans import _is_tensor


def _leaf_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and a != a:
        return b != b
    if all(hasattr(a, name) for name in ("tobytes", "shape", "dtype")):  # numpy arrays and scalars
        try:
            return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        except Exception:
            pass
    try:
        same = a == b
    except Exception:
        return repr(a) == repr(b)
    if isinstance(same, bool):
        return same
    try:
        return bool(same)
    except Exception:
        return repr(a) == repr(b)


def _compare_payloads(expected: Any, actual: Any, on_tensor: Callable[[Any, Any, str], None], problems: list[str]) -> None:
    """Walk both payloads in step; report every difference that is not a tensor's data into ``problems``."""

    def walk(e: Any, a: Any, where: str, depth: int) -> None:
        if len(problems) > 20:
            return
        if depth > 200:
            problems.append(f"{where}: nested too deeply to compare")
            return
        if _is_tensor(e) or _is_tensor(a):
            if not (_is_tensor(e) and _is_tensor(a)):
                problems.append(f"{where}: expected {type(e).__name__}, read back {type(a).__name__}")
                return
            on_tensor(e, a, where)
            return
        if type(e) is not type(a):
            problems.append(f"{where}: expected {type(e).__name__}, read back {type(a).__name__}")
            return
        if isinstance(e, dict):
            ek, ak = list(e.keys()), list(a.keys())
            if ek != ak:
                diff = next((f"{x!r} vs {y!r}" for x, y in zip(ek, ak) if x != y), f"{len(ek)} vs {len(ak)} keys")
                problems.append(f"{where}: keys differ ({diff})")
                return
            em, am = getattr(e, "_metadata", None), getattr(a, "_metadata", None)
            if em is not None or am is not None:
                if em is None or am is None or dict(em) != dict(am):
                    problems.append(f"{where}: _metadata differs")
            for key in ek:
                walk(e[key], a[key], f"{where}[{key!r}]", depth + 1)
            return
        if isinstance(e, (list, tuple)):
            if len(e) != len(a):
                problems.append(f"{where}: length {len(e)} vs {len(a)}")
                return
            for i, (x, y) in enumerate(zip(e, a)):
                walk(x, y, f"{where}[{i}]", depth + 1)
            return
        state_e, state_a = getattr(e, "__dict__", None), getattr(a, "__dict__", None)
        if isinstance(state_e, dict) and isinstance(state_a, dict) and not isinstance(e, type) and not callable(e):
            walk(dict(state_e), dict(state_a), where, depth + 1)
            return
        if not _leaf_equal(e, a):
            problems.append(f"{where}: {type(e).__name__} value differs")

    walk(expected, actual, "checkpoint", 0)


def _tensor_meta_problem(e: Any, a: Any) -> str | None:
    if type(e) is not type(a):
        return f"type {type(e).__name__} vs {type(a).__name__}"
    if e.dtype != a.dtype or tuple(e.shape) != tuple(a.shape):
        return f"{e.dtype}{tuple(e.shape)} vs {a.dtype}{tuple(a.shape)}"
    if e.layout != a.layout:
        return f"layout {e.layout} vs {a.layout}"
    if e.stride() != a.stride() or e.storage_offset() != a.storage_offset():
        return "strides or storage offset differ"
    if e.requires_grad != a.requires_grad:
        return "requires_grad differs"
    return None
