"""Checkpoint surgery: find the state_dicts in a checkpoint, strip wrapper
prefixes, write the result atomically and verify it bit for bit.

- ``key_plans``: state_dict detection and prefix plans (pure, no torch import);
- ``input_checks``: input and output paths, format detection;
- ``torch_checkpoint`` and ``safetensors_checkpoint``: one reader per format,
  with the same small interface (state_dicts, real_state_dicts, write);
- ``atomic_write`` and ``byte_copy``: verified writes through a partial file,
  the ``.bak`` of ``--in-place``, byte-range copies;
- ``payload_compare``: what was read back against what was meant;
- ``model_check``: ``--model``; ``results``: the versioned result;
- ``fix``: the command as a function.

The modules that read and write files import torch inside functions, so that
importing this package stays cheap.
"""

from __future__ import annotations

from convcheck.statedict.errors import CheckpointError, _human
from convcheck.statedict.fix import FixOptions, fix_checkpoint
from convcheck.statedict.key_plans import (
    WRAPPER_PREFIXES,
    KeyPlan,
    common_wrapper_prefix,
    find_state_dicts,
    mixed_prefixes,
    plan_state_dict,
    rename_metadata,
    strip_leading,
)
from convcheck.statedict.results import FixResult
from convcheck.statedict.torch_checkpoint import _TorchReader

__all__ = [
    "WRAPPER_PREFIXES",
    "CheckpointError",
    "FixOptions",
    "FixResult",
    "KeyPlan",
    "_TorchReader",
    "_human",
    "common_wrapper_prefix",
    "find_state_dicts",
    "fix_checkpoint",
    "mixed_prefixes",
    "plan_state_dict",
    "rename_metadata",
    "strip_leading",
]
