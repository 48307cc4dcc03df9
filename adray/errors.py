"""Errors a person can act on, and how every command reports them.

A command ends in one of three ways: success (exit 0), an *expected* user error (exit 2, one line
``adray <cmd>: error: <message>`` on stderr, no traceback), or a bug (the traceback, exit 1). Expected
errors are :class:`UserError` and its subclasses, plus the friendly errors that existed before this module
(:func:`user_error_types` lists them). :func:`adray.cli.run_command` applies this to every subcommand, so
``adray <cmd>`` and ``python jobs/<cmd>.py`` behave the same.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """An error the person running the command can fix (a wrong flag, missing input, refused access, a
    run id held by another writer, ...). Its message says what is wrong and what to do, in one line."""


class ConfigError(UserError, ValueError):
    """Flags or configuration values that cannot work together (a ``ValueError`` as before)."""


#: Exception classes from modules that predate :class:`UserError`: ``(module, class name)``. A class
#: counts only once its module has been imported (an error of a module never imported cannot be raised).
_KNOWN: tuple[tuple[str, str], ...] = (
    ("adray.storage", "StorageError"),
    ("adray.catalog", "CatalogError"),
    ("adray.evaluation.join", "EvaluationError"),
    ("adray.backbones.weights", "WeightsUnavailableError"),
    ("adray.backbones.weights", "BackboneNameError"),
)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes a command reports as one line with exit code 2.

    :class:`UserError`; the friendly errors of storage, catalog, evaluation and weights; and
    ``FileNotFoundError`` / ``PermissionError`` / ``NotADirectoryError`` / ``IsADirectoryError`` that reach
    the top of a command (a path or object the user named does not exist or may not be read: s3fs raises
    these for a missing bucket or key and for a 403).
    """
    types: list[type[BaseException]] = [
        UserError,
        FileNotFoundError,
        PermissionError,
        NotADirectoryError,
        IsADirectoryError,
    ]
    for module, name in _KNOWN:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            types.append(cls)
    return tuple(types)


def one_line(exc: BaseException) -> str:
    """The error's message on one line (whitespace runs collapsed); OS errors say what they refer to."""
    cause = getattr(exc, "cause", None)  # Ray's RayTaskError(X) is an X whose text holds the remote traceback
    if type(exc).__name__.startswith("RayTaskError") and isinstance(cause, BaseException):
        exc = cause
    text = str(exc)
    if isinstance(exc, OSError):
        text = exc.strerror or text
        if exc.filename and str(exc.filename) not in text:
            text = f"{exc.filename}: {text}"
        what = next((v for k, v in _OS_KINDS if isinstance(exc, k)), "")
        if what and what not in text.lower():
            text = f"{what}: {text}"
    return " ".join(text.split()) or type(exc).__name__


_OS_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (FileNotFoundError, "not found"),
    (PermissionError, "access refused"),
    (NotADirectoryError, "not a folder"),
    (IsADirectoryError, "is a folder"),
)


def report(prog: str, exc: BaseException) -> int:
    """Print ``<prog>: error: <message>`` to stderr and return exit code 2."""
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return 2
