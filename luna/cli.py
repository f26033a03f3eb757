"""One error policy for every entry point (lightning-hydra-template's ``task_wrapper``, in luna's terms).

``@entry_point`` wraps a Hydra task function: a :class:`~luna.errors.LunaError` is logged, printed as one line
``error: <message>`` on stderr and ends the process with exit code 2 (a user error, never a traceback); any
other exception is a bug and propagates with its traceback. Library warnings go to the log, so stderr carries
only errors.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable, TypeVar

from luna.errors import LunaError, one_line

F = TypeVar("F", bound=Callable[..., Any])
USER_ERROR = 2

log = logging.getLogger("luna")


def fail(e: BaseException) -> None:
    """Report a user error the one way luna does, then exit 2."""
    msg = one_line(e)
    if logging.getLogger().handlers:  # Hydra's log file and console; without handlers logging would print it twice
        log.error("%s", msg)
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR)


def entry_point(fn: F) -> F:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        logging.captureWarnings(True)
        try:
            return fn(*args, **kwargs)
        except LunaError as e:
            fail(e)

    return wrapped  # type: ignore[return-value]
