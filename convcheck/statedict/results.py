"""What ``fix-state-dict`` found and did; the JSON form is versioned."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from convcheck.exitcodes import ExitCode

#: Version of the JSON form of :class:`FixResult`.
RESULT_VERSION = 1


class StateDictReport(BaseModel):
    """What was found in one state_dict and what changes."""

    path: list[Any]
    location: str
    keys: int
    status: Literal["fix", "clean", "mixed"]
    removed_prefix: str | None = None
    added_prefix: str | None = None
    forced: bool = False
    keys_changed: int = 0
    examples: list[tuple[str, str]] = Field(default_factory=list)
    mixed: dict[str, int] = Field(default_factory=dict)
    mixed_examples: list[str] = Field(default_factory=list)
    metadata_entries: int | None = None
    metadata_entries_after: int | None = None
    interior_orig_mod: int = 0


class KeyDiff(BaseModel):
    """How a set of keys compares with the model's own state_dict."""

    missing: int
    unexpected: int
    shape_mismatch: int = 0
    missing_examples: list[str] = Field(default_factory=list)
    unexpected_examples: list[str] = Field(default_factory=list)
    shape_examples: list[str] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)


class ModelStateDictCheck(BaseModel):
    location: str
    before: KeyDiff
    after: KeyDiff


class ModelCheck(BaseModel):
    """The result of comparing the state_dicts with a model built by ``--model``."""

    factory: str
    model_class: str
    model_keys: int
    state_dicts: list[ModelStateDictCheck] = Field(default_factory=list)
    target: str | None = None
    strict_ok: bool = False
    strict_error: str | None = None


class Verification(BaseModel):
    """What was read back from the written file and compared with the source."""

    ok: bool
    tensors: int = 0
    storages: int = 0
    bytes_compared: int = 0
    problems: list[str] = Field(default_factory=list)


class FixResult(BaseModel):
    """Everything ``convcheck fix-state-dict`` found and did."""

    version: int = RESULT_VERSION
    checkpoint: str
    format: Literal["torch-zip", "torch-legacy", "safetensors"]
    size_bytes: int
    mode: Literal["dry-run", "output", "in-place"]
    status: Literal["would-fix", "nothing-to-fix", "fixed", "unchanged-copy", "verification-failed", "strict-failed"]
    state_dicts: list[StateDictReport] = Field(default_factory=list)
    output: str | None = None
    backup: str | None = None
    verification: Verification | None = None
    model: ModelCheck | None = None
    notes: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.status in ("verification-failed", "strict-failed"):
            return ExitCode.FINDINGS
        return ExitCode.OK
