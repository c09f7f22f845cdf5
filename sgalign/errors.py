"""One exit-code scheme for every command: ``UserError`` (bad input or config: exit 2) is raised by the library
with a one-line message naming the file, field or component and what to do; scripts map it (and ``ConfigError``,
a ``UserError``) to exit 2, a diverged run to 3, anything else to 1 (a failure during work)."""
from __future__ import annotations

import errno
import sys

from .progress import quiet_library_bars

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DIVERGED = 0, 1, 2, 3
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}
MAX_MESSAGE = 300  # characters of a command's one error line


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: a user's 100 KB label must not make a 100 KB error line."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 5] + "...'" + f"({len(str(value))} chars)"


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` as one line of at most ``limit`` characters (line breaks become "; ", the middle is cut)."""
    text = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    if len(text) <= limit:
        return text
    keep = limit - 5
    return text[:keep * 2 // 3] + " ... " + text[-(keep - keep * 2 // 3):]


class UserError(Exception):
    """Bad input or configuration: the message says what is wrong and what to do (exit code 2)."""

    exit_code = EXIT_USAGE


def run_main(fn, debug: bool = False, prog: str = "") -> int:
    """Call ``fn()`` (returns an exit code or None) under the scheme: a ``UserError`` prints one line and returns
    2, an exception with an ``exit_code`` attribute (a diverged run: 3) prints one line and returns that code, any
    other exception prints one line and returns 1. ``debug``: exceptions propagate (tracebacks are for bugs)."""
    quiet_library_bars()
    head = f"{prog}: " if prog else ""
    try:
        rc = fn()
        return EXIT_OK if rc is None else int(rc)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if debug:
            raise
        code = getattr(e, "exit_code", None)
        if isinstance(e, OSError) and e.errno in _UNWRITABLE and getattr(e, "filename", None):
            # an output path that cannot be created or written (read-only, a file in the way): the user's to fix
            print(one_line(f"{head}error: cannot write {e.filename}: {e.strerror}; choose another output path"),
                  file=sys.stderr)
            return EXIT_USAGE
        if isinstance(e, UserError) or code is not None:
            print(one_line(f"{head}error: {e}"), file=sys.stderr)
            if getattr(e, "next_command", None):  # advice that is a command: whole, on its own line
                print(f"next: {e.next_command}", file=sys.stderr)
            return int(code if code is not None else EXIT_USAGE)
        msg = str(e).splitlines()[0] if str(e) else ""
        tail = " (failed during the work; rerun with --debug for the traceback)"
        print(one_line(f"{head}error: {type(e).__name__}: {msg}", MAX_MESSAGE - len(tail)) + tail, file=sys.stderr)
        return EXIT_FAILURE
