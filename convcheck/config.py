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

    select: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list)
    fail_on: Literal["error", "warning", "info", "never"] = Field("error", alias="fail-on")
    steps: int = Field(20, ge=1)
    nproc_per_node: int | None = Field(None, alias="nproc-per-node", ge=1, le=64)
    timeout: float = Field(300.0, gt=0)
    max_batches_per_epoch: int | None = Field(None, alias="max-batches-per-epoch", ge=1)
    #: glob pattern (relative to the pyproject.toml's folder) -> codes or names to ignore there.
    per_file_ignores: dict[str, list[str]] = Field(default_factory=dict, alias="per-file-ignores")
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
    return EffectiveConfig(source=str(path), settings=settings)


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
