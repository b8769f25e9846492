"""Command-line plumbing shared by every script.

A tool script (the simulator, the visualisers, …) declares a ``@dataclass Args`` whose fields carry a docstring
(the string literal right after the field, as in CleanRL). :func:`parse_args` turns it into an argparse parser
with that docstring as the flag's help, and :func:`run_main` runs ``main(args)`` so that bad input ends with one
line on stderr and exit code 2 instead of a traceback. The stage scripts read the one config instead
(:mod:`car_racing.common.config`), through the same error handling (:func:`report_errors`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from typing import Any, Callable, Literal, TypeVar, get_args, get_origin

ArgsT = TypeVar("ArgsT")

USAGE_EXIT_CODE = 2


class UsageError(Exception):
    """Bad input from the user (a flag, a file): reported as one line, exit code 2."""


def field_docstrings(cls: type) -> dict[str, str]:
    """Map each dataclass field to the string literal written right after it in the class body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, following in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit code 2 (argparse prints usage + error)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message} (see --help)\n")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1 and len(get_args(annotation)) == 2:
            return members[0], True
    return annotation, False


def flag_kwargs(annotation: Any, metavar: str | None = None, nargs: str = "+") -> dict[str, Any]:
    """``add_argument`` keywords for a field of type ``annotation``: ``--x/--no-x`` for a bool, choices for a
    Literal, ``nargs`` values for a list or tuple, else the type itself (``metavar`` labels a value)."""
    named = {"metavar": metavar} if metavar else {}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        return {"choices": choices, "type": type(choices[0]), "metavar": "{" + ",".join(map(str, choices)) + "}"}
    if get_origin(annotation) in (list, tuple):
        return {"nargs": nargs, "type": get_args(annotation)[0], **named}
    return {"type": annotation, **named}


def build_parser(args_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--kebab-case`` flag per field of the dataclass ``args_cls``."""
    parser = OneLineErrorParser(
        description=description or (inspect.getdoc(args_cls) or ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    docs = field_docstrings(args_cls)
    hints = typing.get_type_hints(args_cls)
    for field in dataclasses.fields(args_cls):
        flag = "--" + field.name.replace("_", "-")
        help_text = docs.get(field.name, "")
        annotation, optional = _unwrap_optional(hints[field.name])
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        # an Optional value: argparse would label it after the type (STR); the flag's own name reads better
        metavar = field.name.upper() if optional else None
        parser.add_argument(flag, dest=field.name, default=default, help=help_text,
                            **flag_kwargs(annotation, metavar))
    return parser


def parse_args(args_cls: Callable[..., ArgsT], argv: list[str] | None = None) -> ArgsT:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into an instance of the dataclass ``args_cls``."""
    values = vars(build_parser(args_cls).parse_args(argv))  # type: ignore[arg-type]
    hints = typing.get_type_hints(args_cls)
    for name, value in values.items():
        if isinstance(value, list) and get_origin(_unwrap_optional(hints[name])[0]) is tuple:
            values[name] = tuple(value)
    return args_cls(**values)


def report_errors(main: Callable[[ArgsT], Any], settings: ArgsT) -> None:
    """Run ``main(settings)`` (a tool's ``Args`` or a stage's config): a :class:`UsageError` becomes one line on
    stderr and exit code 2; Ctrl-C exits with 130 after the stage has had its chance to save (stages save
    atomically as they go, so nothing is lost beyond the work in progress)."""
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "car_racing"
    try:
        main(settings)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the last saved state is kept and can be resumed", file=sys.stderr)
        sys.exit(130)


def run_main(main: Callable[[ArgsT], Any], args_cls: Callable[..., ArgsT], argv: list[str] | None = None) -> None:
    """A tool script's ``__main__``: parse its ``Args`` from the command line and run ``main(args)``
    (:func:`report_errors`). The stage scripts use :func:`car_racing.common.config.run_stage` instead."""
    report_errors(main, parse_args(args_cls, argv))
