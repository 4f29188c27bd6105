"""One error type for bad input, and the one-line way it is shown to a user."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn


class ConfigError(ValueError):
    """A config value, override, file or checkpoint that cannot be used.

    The message always names the field, the bad value and what would be valid,
    so that a sweep of many runs fails with a line a person can act on.
    """

    def __init__(self, field: str, value: object, valid: str) -> None:
        self.field = field
        self.value = value
        self.valid = valid
        super().__init__(f"{field}={value!r} is invalid: {valid}")


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN or inf; raised before the optimizer step can spread it into the weights."""


def close_key(word: str, known: Sequence[str]) -> str | None:
    """The one key of ``known`` that ``word`` is a likely misspelling of (difflib's ratio), or None."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return close[0] if close else None


def unknown_key_hint(word: str, known: Sequence[str], prefix: str = "") -> str:
    """``did you mean <prefix.key>?`` for a close key, else the keys there are: the words of every
    unknown-key error (command line overrides and YAML files alike)."""
    close = close_key(word, known)
    if close is not None:
        return f"did you mean {prefix + '.' if prefix else ''}{close}?"
    where = f" of {prefix}" if prefix else ""
    return f"valid keys{where}: {', '.join(known)}" if known else "no keys are defined there"


def fail(prog: str, message: object, code: int = 2) -> NoReturn:
    """Print ``<prog>: error: <message>`` as the one line a user sees, and exit.

    Only the message's first line: a wrapped library error must not become a traceback-sized message.
    """
    text = str(message).strip()
    print(f"{prog}: error: {text.splitlines()[0] if text else 'unknown error'}", file=sys.stderr)
    sys.exit(code)


def key_value_args(argv: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    """The ``key=value`` commands' words -> dict; ConfigError for a word without ``=`` or an unknown key."""
    args: dict[str, str] = {}
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep:
            raise ConfigError("argument", word, f"write key=value with keys {', '.join(keys)}")
        if key not in keys:
            raise ConfigError(key, value, f"unknown key; {unknown_key_hint(key, keys)}")
        args[key] = value
    return args


def key_value_main(prog: str, doc: str | None, run: Callable[[list[str]], str], argv: list[str] | None) -> None:
    """The ``key=value`` commands' shared shape: help on no arguments, one error line on bad input."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        return
    try:
        print(run(argv))
    except ConfigError as e:
        fail(prog, e)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every ``--option`` command of the project: a bad argument is the one :func:`fail` line
    (``argument --steps: invalid int value: 'abc'``), not argparse's usage block above the message."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message} (--help lists the options)")
