"""The command line's own words: plain help text, and usage errors without parser jargon.

typer lays out help with type hints (``<int range>``) and braces, and reports bad values in
its validation library's phrasing; convcheck's commands read like pip's or ruff's instead.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from convcheck.exitcodes import ExitCode


def unknown_option_message(name: str, known: list[str]) -> str:
    """``unknown option --stpes (did you mean --steps?)``."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"unknown option {name}" + (f" (did you mean {close[0]}?)" if close else "")


#: What typer's pydantic-based parsing says, and what a person wants to read instead.
_PLAIN = [
    (re.compile(r"Value error, "), ""),
    (re.compile(r"Input should be greater than or equal to (\S+)"), r"must be at least \1"),
    (re.compile(r"Input should be less than or equal to (\S+)"), r"must be at most \1"),
    (re.compile(r"Input should be greater than (\S+)"), r"must be more than \1"),
    (re.compile(r"Input should be less than (\S+)"), r"must be less than \1"),
    (re.compile(r"Input should be a valid integer.*"), "must be a whole number"),
    (re.compile(r"Input should be a valid number.*"), "must be a number"),
    (re.compile(r"Input should be a valid boolean.*"), "must be true or false"),
    (re.compile(r"Input should be a valid string.*"), "must be text"),
    (re.compile(r"Input should be a valid list.*"), "must be a list"),
    (re.compile(r"Input should be a valid dictionary.*"), "must be a table"),
    (re.compile(r"Input should be (.*)"), r"must be \1"),
]


def plain_message(message: str) -> str:
    """A validation message without the validation library's phrasing."""
    for pattern, replacement in _PLAIN:
        message = pattern.sub(replacement, message)
    return message


def refuse_unknown_option(ctx: typer.Context, script: str) -> None:
    """A SCRIPT that looks like an option is one this command does not know (a typo like --stpes)."""
    if not script.startswith("-") or script.startswith("-m") or Path(script).exists():
        return  # -m MODULE runs a module, as python -m does
    name = script.split("=", 1)[0]
    known = [opt for param in ctx.command.params for opt in (*param.opts, *param.secondary_opts)
             if opt.startswith("-")] + list(ctx.help_option_names)
    sys.stderr.write(usage_error_text(unknown_option_message(name, known), ctx))
    raise typer.Exit(int(ExitCode.CANNOT_RUN))


def between(low: float, high: float | None = None):  # noqa: ANN202
    """A callback that refuses a number outside [low, high] in plain words."""

    def check(value: float | None) -> float | None:
        if value is not None and (value < low or (high is not None and value > high)):
            bound = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise typer.BadParameter(f"must be {bound} (got {value:g})")
        return value

    return check


def usage_error_text(message: str, ctx: typer.Context | None) -> str:
    """A usage error as convcheck prints it: the problem, the usage line, where help is."""
    lines = [f"convcheck: {message}"]
    if ctx is not None:
        lines.append(ctx.get_usage())
        lines.append(f"Try '{ctx.command_path} -h' for help.")
    return "\n".join(lines) + "\n"


def _parser_message(exc: typer.TyperException) -> str:
    """What the parser objected to, in plain words."""
    option = getattr(exc, "option_name", None)
    if option is not None:  # an option the parser does not know
        return unknown_option_message(option, list(getattr(exc, "possibilities", None) or []))
    message = plain_message(exc.format_message())
    for said, meant in (("Invalid value for ", "invalid value for "), ("Missing argument ", "missing argument "),
                        ("No such command ", "no such command "), ("Missing option ", "missing option ")):
        message = message.replace(said, meant, 1)
    return message


#: Help text as the parser lays it out, and as convcheck shows it (no type hints, no braces).
_HELP_CLEANUPS = [
    (re.compile(r"\{([A-Z_]+)\}"), r"\1"),  # required arguments in the usage line
    (re.compile(r"(?m)^(  [A-Z_]+(?:\.\.\.)?)( <[^>\n]+>)"), lambda m: m.group(1) + " " * len(m.group(2))),
    (re.compile(r"\s+\[required\]"), ""),
]


def clean_help(text: str) -> str:
    """The parser's help or usage text, without its type hints and markers."""
    for pattern, replacement in _HELP_CLEANUPS:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.splitlines())


class PlainCommand(TyperCommand):
    """A command whose help and usage read plainly."""

    def get_help(self, ctx: typer.Context) -> str:  # noqa: D102
        return clean_help(super().get_help(ctx))

    def get_usage(self, ctx: typer.Context) -> str:  # noqa: D102
        return clean_help(super().get_usage(ctx))


class PlainGroup(TyperGroup):
    """The command group, with plain help and usage."""

    def get_help(self, ctx: typer.Context) -> str:  # noqa: D102
        return clean_help(super().get_help(ctx))

    def get_usage(self, ctx: typer.Context) -> str:  # noqa: D102
        return clean_help(super().get_usage(ctx))


def invoke(command: typer.Typer, args: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run a typer app; parser errors come out in convcheck's words. Returns the exit code."""
    try:
        code = command(args=args, standalone_mode=False, prog_name=prog_name)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `convcheck` alone: the help, as click prints it
            exc.show()
        elif hasattr(exc, "ctx"):  # a usage error: bad option, bad value, missing argument
            sys.stderr.write(usage_error_text(_parser_message(exc), exc.ctx))
        else:
            sys.stderr.write(f"convcheck: {exc.format_message()}\n")
        return int(getattr(exc, "exit_code", ExitCode.CANNOT_RUN))
    except typer.Abort:
        return int(ExitCode.INTERRUPTED)
    return int(code) if isinstance(code, int) else 0
