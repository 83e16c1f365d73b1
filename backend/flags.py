"""Command-line flags that check their value as they are parsed, naming the flag typed.

The `layerdiffuse` parser is built from these: `parameter_flag` takes a flag's default,
range and help from `protocol.PARAMETERS` (the table the server checks requests
against), `number_flag` and `choice_flag` do the same for the other options. A bad
value raises `UsageError` at once, before anything heavy is imported, with one line such
as `--stop-at: 2.0 outside 0.0..1.0`. Which flag the user typed for each option is kept
in the namespace (`typed_flag`), so later checks can name it too.

Only the standard library and `protocol`: importing this costs nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

from protocol import PARAMETERS, InvalidParameter, ParameterSpec

__all__ = [
    "Parser",
    "UsageError",
    "choice_flag",
    "number_flag",
    "parameter_flag",
    "path_flag",
    "typed_flag",
]

_TYPED = "_typed_flags"


class UsageError(Exception):
    """A command line that cannot run; the message is one line naming the flag."""


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (`UsageError`), not usage and exit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def typed_flag(namespace: argparse.Namespace, dest: str, default: str) -> str:
    """The flag the user typed for the option stored in `dest`, or `default` if none."""
    typed: dict[str, str] = getattr(namespace, _TYPED, {})
    return typed.get(dest, default)


class _CheckedAction(argparse.Action):
    """Stores `convert(value)`; the flag as typed goes into the message of any refusal."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.convert = kwargs.pop("convert")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        flag = option_string or self.dest
        setattr(namespace, self.dest, self.convert(str(values), flag))
        typed = dict(getattr(namespace, _TYPED, {}))
        typed[self.dest] = flag
        setattr(namespace, _TYPED, typed)


def _to_number(text: str, flag: str, integer: bool, allowed: str) -> int | float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise UsageError(f"{flag}: {text!r} is not {kind} in {allowed}") from None


def parameter_flag(
    parser: argparse.ArgumentParser,
    *flags: str,
    field: str,
    help: str | None = None,
    default: Any = None,
    metavar: str | None = None,
) -> None:
    """Add an option for one request parameter: its default, range and help from the table.

    Args:
        parser: the (sub)command's parser.
        flags: the option strings (`-W`, `--width`).
        field: the `protocol.PARAMETERS` entry; the value is stored under that name.
        help: the help text; the table's meaning if None. The range and the default are
            added to it.
        default: the command line's own default, where it differs from the wire's.
        metavar: the value's name in the help.
    """
    spec = PARAMETERS[field]
    value = spec.default if default is None else default
    text = f"{help or spec.meaning}; {_allowed(spec)} (default: {_shown(value)})"
    if spec.kind in ("integer", "number"):
        integer = spec.kind == "integer"

        def convert(raw: str, flag: str) -> int | float:
            number = _to_number(raw, flag, integer, spec.allowed)
            try:
                spec.check(number, lambda _: flag)
            except InvalidParameter as error:
                raise UsageError(str(error)) from None
            return number

        metavar = metavar or ("N" if integer else "X")
    elif spec.kind == "choice":
        convert = _choice_converter(spec.choices)
        metavar = metavar or field.upper()
    else:  # text

        def convert(raw: str, flag: str) -> str:
            try:
                spec.check(raw, lambda _: flag)
            except InvalidParameter as error:
                raise UsageError(str(error)) from None
            return raw

        metavar = metavar or "TEXT"
    parser.add_argument(
        *flags,
        dest=field,
        action=_CheckedAction,
        convert=convert,
        default=value,
        metavar=metavar,
        help=text,
    )


def number_flag(
    parser: argparse.ArgumentParser,
    *flags: str,
    dest: str,
    low: int,
    high: int | None,
    default: int | None,
    help: str,
    multiple_of: int = 1,
    metavar: str = "N",
) -> None:
    """Add an integer option checked against `low..high` (no upper end if `high` is None).

    `help` gets the range appended; it should say the default itself when that is not
    one number (`default` None).
    """
    allowed = f"{low}..{high}" if high is not None else f"at least {low}"
    if multiple_of > 1:
        allowed = f"a multiple of {multiple_of}, {allowed}"

    def convert(raw: str, flag: str) -> int:
        number = int(_to_number(raw, flag, True, allowed))
        if number < low or (high is not None and number > high) or number % multiple_of:
            raise UsageError(f"{flag}: {number} is not {allowed}")
        return number

    shown = f" (default: {default})" if default is not None else ""
    parser.add_argument(
        *flags,
        dest=dest,
        action=_CheckedAction,
        convert=convert,
        default=default,
        metavar=metavar,
        help=f"{help}; {allowed}{shown}",
    )


def choice_flag(
    parser: argparse.ArgumentParser,
    *flags: str,
    dest: str,
    choices: Sequence[str],
    default: str | None,
    help: str,
    metavar: str | None = None,
    list_choices: bool = True,
) -> None:
    """Add an option taking one of `choices`; a wrong one is refused naming them all.

    `help` gets the choices appended, unless `list_choices` is false (they are listed
    elsewhere in the help).
    """
    shown = f" (default: {default})" if default is not None else ""
    listed = f": {', '.join(choices)}" if list_choices else ""
    parser.add_argument(
        *flags,
        dest=dest,
        action=_CheckedAction,
        convert=_choice_converter(tuple(choices)),
        default=default,
        metavar=metavar or dest.upper(),
        help=f"{help}{listed}{shown}",
    )


def path_flag(
    parser: argparse.ArgumentParser,
    *flags: str,
    dest: str,
    help: str,
    default: Path | None = None,
    metavar: str = "PATH",
) -> None:
    """Add a path option; its file is checked later, by a message naming the flag typed."""
    parser.add_argument(
        *flags,
        dest=dest,
        action=_CheckedAction,
        convert=lambda raw, flag: Path(raw),
        default=default,
        metavar=metavar,
        help=help,
    )


def _choice_converter(choices: tuple[str, ...]) -> Any:
    def convert(raw: str, flag: str) -> str:
        if raw not in choices:
            raise UsageError(f"{flag}: {raw!r} is not one of {', '.join(choices)}")
        return raw

    return convert


def _allowed(spec: ParameterSpec) -> str:
    if spec.kind == "choice":
        return "one of " + ", ".join(spec.choices)
    return spec.allowed


def _shown(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
