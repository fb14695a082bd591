"""``--model``: compare the state_dicts, before and after the fix, with the keys the model expects."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from convcheck.statedict.errors import _ANSI, CheckpointError, _first_line
from convcheck.statedict.key_plans import _EXAMPLES, StateDictPlan, _is_tensor
from convcheck.statedict.results import KeyDiff, ModelCheck, ModelStateDictCheck


def load_model(spec: str) -> Any:
    """Build the model named by ``module:factory`` (or ``path/to/file.py:factory``)."""
    import importlib
    import importlib.util

    import torch

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CheckpointError(f"--model {spec!r} must look like 'package.module:factory' or 'file.py:factory'.")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            file = Path(module_name)
            if not file.is_file():
                raise CheckpointError(f"--model {spec}: {file} does not exist.")
            mod_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
            sys.path.insert(0, str(file.resolve().parent))
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        model = obj if isinstance(obj, torch.nn.Module) else obj()
    except CheckpointError:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise CheckpointError(f"--model {spec}: building the model failed: {type(exc).__name__}: {_first_line(exc)}.") from exc
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"--model {spec} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _key_diff(keys: Sequence[str], tensors: dict, model_sd: dict) -> KeyDiff:
    have = set(keys)
    want = set(model_sd)
    missing = [k for k in model_sd if k not in have]
    unexpected = [k for k in keys if k not in want]
    shapes = [
        f"{k}: {tuple(tensors[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in keys
        if k in want and _is_tensor(tensors.get(k)) and tuple(tensors[k].shape) != tuple(model_sd[k].shape)
    ]
    return KeyDiff(missing=len(missing), unexpected=len(unexpected), shape_mismatch=len(shapes),
                   missing_examples=missing[:_EXAMPLES], unexpected_examples=unexpected[:_EXAMPLES],
                   shape_examples=shapes[:_EXAMPLES])


def _check_model(spec: str, reader: Any, plans: Sequence[StateDictPlan]) -> ModelCheck:
    model = load_model(spec)
    model_sd = model.state_dict()
    check = ModelCheck(factory=spec, model_class=type(model).__qualname__, model_keys=len(model_sd))
    pairs = reader.real_state_dicts(plans)
    best: tuple[int, int] | None = None
    for i, (plan, (before_sd, after_sd)) in enumerate(zip(plans, pairs)):
        before = _key_diff(list(before_sd), before_sd, model_sd)
        after = _key_diff(list(after_sd), after_sd, model_sd)
        check.state_dicts.append(ModelStateDictCheck(location=plan.report.location, before=before, after=after))
        matched = len(set(after_sd) & set(model_sd))
        if best is None or matched > best[0]:
            best = (matched, i)
    assert best is not None
    target_sd = pairs[best[1]][1]
    check.target = plans[best[1]].report.location
    try:
        model.load_state_dict(target_sd, strict=True)
        check.strict_ok = True
    except Exception as exc:
        text = _ANSI.sub("", str(exc)).strip()
        check.strict_error = " ".join(text.split())[:600]
    return check
