"""The errors a user can cause, in one place. The command line prints any `UserError` as one line and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

# what str.splitlines() breaks a line at: a value echoed in a message must not break it
LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class UserError(Exception):
    """Bad input, not a bug: the message names the file, field or value and says what to do."""


class ConfigError(UserError, ValueError):
    """A config value or key that cannot be used; the message names it."""


class DataError(UserError, ValueError):
    """A prompts, candidates or artifact file whose content cannot be used; the message names the file and row."""


class StageError(UserError, RuntimeError):
    """A stage cannot run as asked (missing input, other config, held lock); the message says what to do."""


class ModelLoadError(UserError, ValueError):
    """The model path does not hold a usable model."""


class BackendError(UserError, ValueError):
    """A backend that cannot run or a server that refuses the requests; the message says which and why."""


class DiskError(UserError, OSError):
    """A folder or file the stage must write that the disk refuses (full, read-only, no rights, immutable)."""


def shown(value: object, limit: int = 120) -> str:
    """`repr(value)` for an error message: at most `limit` characters, and never an error itself (a user's object
    whose repr raises, an integer too long to print)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str) -> str:
    """`text` with every character that would break a line written as its escape, so that a message that echoes a
    user's value stays one line."""
    return LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)
