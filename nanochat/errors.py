"""
User errors: a bad input of the user's ends the program with one line on stderr, naming the
input, what was expected and the fix, and exit code 2. A traceback is for our bugs, so any
other exception keeps Python's. NANOCHAT_DEBUG=1 shows the traceback of a user error too.

    raise UserError("--data-dir /x does not exist: pass a folder of parquet shards")
    raise MissingInput("no checkpoint in /y: train one first (python -m scripts.base_train)")

Scripts that run at module level call `install()` first; a script with a main function may
wrap it instead: `errors.run(main)`.
"""

import contextlib
import os
import sys


class UserError(ValueError):
    """Bad input of the user's (a ValueError, as STYLE asks); the message is the one line shown."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user must provide (or make with an earlier stage) is not there."""


@contextlib.contextmanager
def user_input():
    """Inside it, a ValueError or FileNotFoundError is about what the user gave (a flag that
    built a config, a path), so it becomes a UserError with the same message."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from e


def debug():
    return os.environ.get("NANOCHAT_DEBUG", "") not in ("", "0")


def report(error):
    """The one line for a user error (for callers that handle it themselves)."""
    return f"error: {error}"


def _hook(kind, error, tb):
    if issubclass(kind, UserError) and not debug():
        print(report(error), file=sys.stderr, flush=True)
        raise SystemExit(2)  # raised in the hook, it becomes the exit code
    sys.__excepthook__(kind, error, tb)


def install():
    """Show uncaught UserErrors as one line and exit 2 (a traceback with NANOCHAT_DEBUG=1)."""
    sys.excepthook = _hook


def run(main, *args, **kwargs):
    """Call main(*args, **kwargs); a UserError becomes one line on stderr and exit code 2."""
    try:
        return main(*args, **kwargs)
    except UserError as e:
        if debug():
            raise
        print(report(e), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def short(error):
    """A library's exception in a few words, for the end of a one-line message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:160]}" + ("..." if len(text) > 160 else "")
