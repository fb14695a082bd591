"""Finding the state_dicts in a payload and planning how their keys are renamed.

Pure and import-light (no torch import): the prefix helpers work on key lists
and are reused by other parts of convcheck.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from convcheck.statedict.errors import CheckpointError
from convcheck.statedict.results import StateDictReport

#: Leading key segments that a wrapper adds: DistributedDataParallel and
#: DataParallel add ``module.``, ``torch.compile`` adds ``_orig_mod.``.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

#: ``Module.get_extra_state`` values live under keys ending in this; they may
#: be any object, not only tensors.
EXTRA_STATE_SUFFIX = "_extra_state"

_EXAMPLES = 3

PathTuple = tuple[Any, ...]


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty dict of tensors under string keys, some of them dotted.

    Values under keys ending in ``_extra_state`` may be anything (that is what
    ``Module.get_extra_state`` saves). An optimizer's per-parameter state
    (``{"exp_avg": t, "step": t}``) has no dotted key and is not a state_dict.
    """
    if not isinstance(obj, dict) or not obj:
        return False
    dotted = has_tensor = False
    for key, value in obj.items():
        if not isinstance(key, str):
            return False
        if _is_tensor(value):
            has_tensor = True
        elif not key.endswith(EXTRA_STATE_SUFFIX):
            return False
        if "." in key:
            dotted = True
    return has_tensor and dotted


def find_state_dicts(obj: Any) -> list[tuple[PathTuple, dict]]:
    """Every state_dict inside ``obj``, with the path of keys/indices leading to it.

    The top level is path ``()``; a training checkpoint's model is typically
    ``("model",)`` or ``("state_dict",)``. Only dicts, lists and tuples are
    walked; a state_dict is not searched further.
    """
    found: list[tuple[PathTuple, dict]] = []

    def walk(node: Any, path: PathTuple, active: set[int]) -> None:
        if is_state_dict(node):
            found.append((path, node))
            return
        if isinstance(node, dict):
            children: Iterable[tuple[Any, Any]] = node.items()
        elif isinstance(node, (list, tuple)):
            children = enumerate(node)
        else:
            return
        if id(node) in active:  # a cycle (only possible with --trust)
            return
        active.add(id(node))
        for key, child in children:
            walk(child, path + (key,), active)
        active.discard(id(node))

    walk(obj, (), set())
    return found


def common_wrapper_prefix(keys: Iterable[str], prefixes: Sequence[str] = WRAPPER_PREFIXES) -> str | None:
    """The chain of wrapper prefixes that leads every key, or None.

    ``["module._orig_mod.fc.weight", "module._orig_mod.fc.bias"]`` gives
    ``"module._orig_mod."``. A prefix counts only when every key starts with
    it and keeps a non-empty name after it; text inside a key never counts.
    """
    keys = list(keys)
    if not keys:
        return None
    chain = ""
    while True:
        for prefix in prefixes:
            start = len(chain)
            if all(k.startswith(prefix, start) and len(k) > start + len(prefix) for k in keys):
                chain += prefix
                break
        else:
            return chain or None


def mixed_prefixes(keys: Sequence[str], prefixes: Sequence[str] = WRAPPER_PREFIXES, after: str = "") -> dict[str, int]:
    """Prefixes that lead some but not all keys (after the common chain ``after``): prefix → count."""
    keys = list(keys)
    counts: dict[str, int] = {}
    start = len(after)
    for prefix in prefixes:
        n = sum(1 for k in keys if k.startswith(prefix, start))
        if 0 < n < len(keys):
            counts[prefix] = n
    return counts


def strip_leading(key: str, prefixes: Sequence[str], allow_empty: bool = False) -> str:
    """``key`` without any sequence of leading ``prefixes``."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix) and (allow_empty or len(key) > len(prefix)):
                key = key[len(prefix):]
                changed = True
    return key


def normalize_prefix(text: str) -> str:
    """A prefix as given on the command line, ending with exactly one dot."""
    text = text.strip()
    if not text or text.strip(".") == "":
        raise CheckpointError(f"Prefix {text!r} is empty: give a module path such as 'model.'.")
    return text.rstrip(".") + "."


@dataclass(frozen=True)
class KeyPlan:
    """How the keys of one state_dict are renamed.

    ``strip`` is the common chain removed from every key; with ``force`` any
    leading ``prefixes`` left on a key are removed too (mixed state_dicts);
    ``add`` is put in front of every key afterwards.
    """

    strip: str = ""
    add: str = ""
    force: bool = False
    prefixes: tuple[str, ...] = WRAPPER_PREFIXES

    @property
    def changes_anything(self) -> bool:
        return bool(self.strip or self.add or self.force)

    def rename(self, key: str) -> str:
        rest = key[len(self.strip):]
        if self.force:
            rest = strip_leading(rest, self.prefixes)
        return self.add + rest

    def rename_module_path(self, path: str) -> str | None:
        """The new name of a ``_metadata`` entry (a module path), or None to drop it.

        ``""`` is the outermost module. Stripping ``module.`` turns the
        wrapped model's entry ``"module"`` into ``""`` and drops the wrapper's
        own ``""`` entry, exactly what the unwrapped model would have saved.
        """
        dotted = path + "." if path else ""
        if self.strip:
            if dotted.startswith(self.strip):
                rest = dotted[len(self.strip):]
            elif self.strip.startswith(dotted):
                return None  # a wrapper level
            else:
                rest = dotted
        else:
            rest = dotted
        if self.force:
            rest = strip_leading(rest, self.prefixes, allow_empty=True)
        new = self.add + rest
        return new[:-1] if new.endswith(".") else new


def rename_metadata(metadata: dict, plan: KeyPlan) -> "OrderedDict[str, Any]":
    """``_metadata`` with its module paths renamed like the keys."""
    out: OrderedDict[str, Any] = OrderedDict()
    renamed: dict[str, bool] = {}
    for path, value in metadata.items():
        new = plan.rename_module_path(path) if isinstance(path, str) else path
        if new is None:
            continue
        changed = new != path
        if new in out and renamed[new] and not changed:
            continue  # an entry moved here from the wrapped model wins
        out[new] = value
        renamed[new] = changed
    return out


def rename_state_dict(state_dict: dict, plan: KeyPlan) -> dict:
    """A new state_dict of the same type with renamed keys, same values, renamed ``_metadata``."""
    try:
        new = type(state_dict)()
    except Exception:
        new = OrderedDict()
    for key, value in state_dict.items():
        new[plan.rename(key)] = value
    metadata = getattr(state_dict, "_metadata", None)
    if isinstance(metadata, dict):
        try:
            new._metadata = rename_metadata(metadata, plan)  # type: ignore[attr-defined]
        except AttributeError:  # a plain dict takes no attributes
            pass
    return new


def _replace_at(root: Any, path: PathTuple, fn: Callable[[Any], Any]) -> Any:
    if not path:
        return fn(root)
    head, rest = path[0], path[1:]
    new_child = _replace_at(root[head], rest, fn)
    if isinstance(root, tuple):
        items = list(root)
        items[head] = new_child
        return type(root)(*items) if hasattr(root, "_fields") else type(root)(items)
    new_root = copy.copy(root)
    new_root[head] = new_child
    return new_root


def describe_path(path: PathTuple) -> str:
    """``("model",)`` → ``checkpoint["model"]``; ``()`` → ``checkpoint``."""
    return "checkpoint" + "".join(f"[{p!r}]" if not isinstance(p, str) else f'["{p}"]' for p in path)


@dataclass
class StateDictPlan:
    path: PathTuple
    keys: list[str]
    plan: KeyPlan
    report: StateDictReport


def plan_state_dict(
    path: PathTuple,
    keys: Sequence[str],
    prefixes: Sequence[str] = WRAPPER_PREFIXES,
    add_prefix: str = "",
    force: bool = False,
    metadata: dict | None = None,
) -> StateDictPlan:
    """Decide how one state_dict's keys change; pure (keys and ``_metadata`` in, plan out)."""
    keys = list(keys)
    prefixes = tuple(prefixes)
    chain = common_wrapper_prefix(keys, prefixes) or ""
    # Only a state_dict without a common chain can be half-wrapped. After a chain, a
    # leading "module." is a real submodule (DDP(model) where model.module exists).
    mixed = mixed_prefixes(keys, prefixes) if not chain else {}
    location = describe_path(path)
    report = StateDictReport(
        path=list(path), location=location, keys=len(keys), status="clean",
        metadata_entries=len(metadata) if metadata is not None else None,
        interior_orig_mod=sum(1 for k in keys if "._orig_mod." in k[len(chain):]),
    )
    if mixed:
        report.mixed = mixed
        report.mixed_examples = [k for k in keys if any(k.startswith(p, len(chain)) for p in mixed)][:_EXAMPLES]
        report.mixed_examples += [k for k in keys if not any(k.startswith(p, len(chain)) for p in mixed)][:_EXAMPLES]
        if not force:
            report.status = "mixed"
            return StateDictPlan(path, keys, KeyPlan(prefixes=prefixes), report)
    plan = KeyPlan(strip=chain, add=add_prefix, force=bool(mixed) and force, prefixes=prefixes)
    new_keys = [plan.rename(k) for k in keys]
    if len(set(new_keys)) != len(new_keys):
        seen: dict[str, str] = {}
        for old, new in zip(keys, new_keys):
            if new in seen:
                raise CheckpointError(
                    f"In {location}, removing the prefixes would give two keys the same name: "
                    f"{seen[new]!r} and {old!r} both become {new!r}. Nothing was changed; "
                    "this state_dict holds keys of two different models and cannot be fixed by renaming."
                )
            seen[new] = old
    changed = [(old, new) for old, new in zip(keys, new_keys) if old != new]
    report.keys_changed = len(changed)
    report.examples = changed[:_EXAMPLES]
    report.removed_prefix = chain or None
    report.added_prefix = add_prefix or None
    report.forced = plan.force
    report.status = "fix" if changed else "clean"
    if not changed:
        plan = KeyPlan(prefixes=prefixes)
    if metadata is not None:
        report.metadata_entries_after = len(rename_metadata(metadata, plan))
    return StateDictPlan(path, keys, plan, report)


def apply_plans(payload: Any, plans: Sequence[StateDictPlan]) -> Any:
    """``payload`` with each planned state_dict renamed; everything else is the same object."""
    for sd_plan in plans:
        if sd_plan.report.status == "fix":
            payload = _replace_at(payload, sd_plan.path, lambda sd, p=sd_plan.plan: rename_state_dict(sd, p))
    return payload
