"""What every entry point shares: argument parsing and one mapping from exceptions to a line and an exit code.

Exit codes: 0 done, 2 bad input (a user error, a missing or unwritable file, a bad argument),
130 interrupted (finished work is kept), 1 anything else (a full disk, or a bug). Every error is
exactly one line on stderr, so scripts and job logs can show it as is; ``I2M2_DEBUG=1`` adds the
traceback above it. SIGTERM (``kill``, ``ray job stop``, a scheduler) stops a CLI the way Ctrl-C does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from i2m2_ray.errors import I2M2Error

BAD_INPUT, INTERRUPTED, FAILED = 2, 130, 1
# File errors a user fixes (a wrong path, a read-only or misplaced directory): bad input, not a crash.
USER_OS_ERRORS = (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)


class Stopped(KeyboardInterrupt):
    """An interrupt that carries its own one-line message (e.g. which phase was stopped)."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(BAD_INPUT, f"error: {self.prog}: {message} (see --help)\n")


def config_parser(prog: str, description: str | None, what: str) -> Parser:
    """A parser for ``[FILE.yaml] [key=value ...]``; ``what`` describes FILE in --help."""
    parser = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", metavar="ARG", help=f"{what}, then key=value overrides")
    return parser


def split_config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The optional leading config file (the first argument without '='), then the overrides."""
    rest = list(args)
    path = rest.pop(0) if rest and "=" not in rest[0] else None
    return path, rest


def parse_config_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse with options and positionals intermixed; sets ``ns.config`` and ``ns.overrides``."""
    ns = parser.parse_intermixed_args(argv)
    ns.config, ns.overrides = split_config_args(ns.args)
    return ns


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _os_error_line(exc: OSError) -> str:
    what = exc.strerror or _one_line(str(exc)) or type(exc).__name__
    return f"{exc.filename}: {what}" if exc.filename is not None else what


def quiet_ray() -> None:
    """Keep Ray's start-up lines (cluster started, token auth on, ...) off stderr, so an error stays one line.

    Read at ``import ray``, so set before it; only the driver's ``ray`` logger (Tune's warnings keep
    their own level). ``RAY_LOGGER_LEVEL=info`` in the environment brings them back.
    """
    os.environ.setdefault("RAY_LOGGER_LEVEL", "error")


def _sigterm_handler(sig: int, frame) -> None:
    handler = signal.getsignal(signal.SIGINT)  # whatever Ctrl-C does right now (e.g. a graceful Tune stop)
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """Make SIGTERM do what Ctrl-C does: finished work kept, exit code 130, one line on stderr.

    Call it again after ``ray.init``: Ray's core worker replaces the handler with a native one that
    dumps a C++ stack and aborts.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_handler)


def classify(exc: BaseException, interrupted: str = "interrupted") -> tuple[int, str]:
    """The exit code and the one stderr line for an exception that ended a CLI."""
    if isinstance(exc, KeyboardInterrupt):
        message = _one_line(str(exc)) if isinstance(exc, Stopped) else ""
        return INTERRUPTED, f"interrupted: {message}" if message else interrupted
    if isinstance(exc, I2M2Error):
        return BAD_INPUT, f"error: {_one_line(str(exc))}"
    if isinstance(exc, USER_OS_ERRORS):
        return BAD_INPUT, f"error: {_os_error_line(exc)}"
    if isinstance(exc, OSError):
        return FAILED, f"error: {_os_error_line(exc)}"
    return FAILED, f"internal error: {type(exc).__name__}: {_one_line(str(exc))} (set I2M2_DEBUG=1 for the traceback)"


def run_cli(body: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """Run a CLI's body and map what it raises to one stderr line and an exit code.

    ``interrupted`` is the line for a plain Ctrl-C (what is kept, how to resume); a ``Stopped``
    carries its own. SIGTERM is handled like Ctrl-C while the body runs.
    """
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        sigterm_as_interrupt()
        return body() or 0
    except (KeyboardInterrupt, Exception) as exc:
        code, line = classify(exc, interrupted)
        if os.environ.get("I2M2_DEBUG") == "1":
            traceback.print_exc()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    try:
        sys.stdout.flush()  # what was printed before the error comes first
    except OSError:  # stdout closed (e.g. piped into head): the error line still goes out
        pass
    print(line, file=sys.stderr, flush=True)
    return code
