"""``[tool.convcheck]`` in the nearest pyproject.toml, validated; command-line flags override it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """The configuration file is invalid; the message says where and why."""


class FileConfig(BaseModel):
    """The keys ``[tool.convcheck]`` accepts (kebab-case, as in the file)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    # Strict types: TOML says what it means, so `steps = true` or `timeout = "10"` is a mistake
    # to report, not a value to coerce (true would become 1 step, or a 1-second timeout).
    select: list[str] = Field(default_factory=list, strict=True)
    ignore: list[str] = Field(default_factory=list, strict=True)
    fail_on: Literal["error", "warning", "info", "never"] = Field("error", alias="fail-on")
    steps: int = Field(20, ge=1, strict=True)
    nproc_per_node: int | None = Field(None, alias="nproc-per-node", ge=1, le=64, strict=True)
    #: Seconds; an integer is a number of seconds too.
    timeout: float = Field(300.0, ge=1, strict=True)
    #: None: training loops' epochs shortened automatically (runtime/epochcap.py); 0: full epochs.
    max_batches_per_epoch: int | None = Field(None, alias="max-batches-per-epoch", ge=0, strict=True)
    protect_files: Literal["auto", "kernel", "python"] = Field("auto", alias="protect-files")
    start_method: Literal["auto", "forkserver", "spawn"] = Field("auto", alias="start-method")
    #: glob pattern (relative to the pyproject.toml's folder) -> codes or names to ignore there.
    per_file_ignores: dict[str, list[str]] = Field(default_factory=dict, alias="per-file-ignores", strict=True)
    #: per-check options: ``[tool.convcheck.checks.CC005] ...`` (code or name -> table).
    checks: dict[str, dict[str, Any]] = Field(default_factory=dict)


class EffectiveConfig(BaseModel):
    """The settings a run uses, and where they came from."""

    model_config = ConfigDict(frozen=True)

    source: str | None
    settings: FileConfig


def find_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest pyproject.toml at or above ``start`` that has a ``[tool.convcheck]`` table."""
    folder = start if start.is_dir() else start.parent
    for candidate in [folder.resolve(), *folder.resolve().parents]:
        path = candidate / "pyproject.toml"
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot be read ({exc}).") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}).") from exc
        table = data.get("tool", {}).get("convcheck")
        if table is not None:
            return path, table
    return None


def load_config(start: Path) -> EffectiveConfig:
    """Read ``[tool.convcheck]`` from the nearest pyproject.toml that has one (defaults otherwise)."""
    found = find_config(start)
    if found is None:
        return EffectiveConfig(source=None, settings=FileConfig())
    path, table = found
    try:
        settings = FileConfig.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(f"{path}: [tool.convcheck] is invalid: {_explain(exc)}") from exc
    unknown = _unknown_codes(settings.per_file_ignores)
    if unknown:
        raise ConfigError(
            f"{path}: [tool.convcheck] is invalid: per-file-ignores names unknown check(s) "
            f"{', '.join(map(repr, unknown))}; give codes or names that `convcheck rules` lists, or \"*\"."
        )
    return EffectiveConfig(source=str(path), settings=settings)


def _unknown_codes(per_file: dict[str, list[str]]) -> list[str]:
    """The codes in per-file-ignores that name no check (a typo there would silently ignore nothing)."""
    from convcheck.catalog import find_check
    from convcheck.suppress import ALL, UNUSED_CODE, UNUSED_NAME

    allowed = {ALL, UNUSED_CODE.lower(), UNUSED_NAME}
    return [code for codes in per_file.values() for code in codes
            if code.strip().lower() not in allowed and find_check(code) is None]


def _explain(exc: ValidationError) -> str:
    from convcheck.cliparse import plain_message

    known = ", ".join(sorted(f.alias or name for name, f in FileConfig.model_fields.items()))
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r} (known keys: {known})")
        else:
            given = f" (got {error['input']!r})" if not isinstance(error.get("input"), (dict, list)) else ""
            parts.append(f"{where} {plain_message(error['msg'])}{given}")
    return "; ".join(parts) + "."


def describe_config(effective: EffectiveConfig, fmt: str = "text") -> str:
    """Every setting, its value and where it came from: the pyproject.toml that set it, or the default."""
    import json

    values = effective.settings.model_dump(by_alias=True)
    given = {FileConfig.model_fields[name].alias or name for name in effective.settings.model_fields_set}
    origin = {key: (effective.source if key in given else "default") for key in values}
    if fmt == "json":
        return json.dumps({"source": effective.source, "settings": values, "origin": origin}, indent=2) + "\n"
    width = max(len(key) for key in values)
    shown = {key: "not set" if value is None else json.dumps(value) for key, value in values.items()}
    value_width = min(max(len(v) for v in shown.values()), 40)
    lines = [f"[tool.convcheck] from {effective.source}" if effective.source
             else "No [tool.convcheck] table found: every setting is the default."]
    for key, value in shown.items():
        lines.append(f"  {key:<{width}}  {value:<{value_width}}  {origin[key]}".rstrip())
    return "\n".join(lines) + "\n"
