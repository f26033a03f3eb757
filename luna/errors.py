"""luna's user errors: one base class, one line each.

Everything a user can cause (a bad config value, a missing file, an unreadable checkpoint, data that cannot be
fetched) raises a :class:`LunaError` subclass whose message is one line naming the culprit. Entry points run
under :func:`luna.cli.entry_point`, which turns any of them into ``error: <message>`` on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class LunaError(Exception):
    """Base of every user-facing error; ``str()`` is one line."""


class ConfigError(LunaError, ValueError):
    """An invalid configuration value; the message starts with the dotted key."""


class CheckpointError(LunaError, RuntimeError):
    """A checkpoint that is missing, unsafe or incompatible; the message is one line naming the file."""


class PretrainedError(LunaError, RuntimeError):
    """The pretrained vocoder is missing, altered or of another version; the message says what to do."""


class AudioError(LunaError, RuntimeError):
    """A file that cannot be used as audio; the message is one line naming the reason."""


class DataError(LunaError, RuntimeError):
    """Data that is missing, corrupt or cannot be fetched; the message says what and where."""


class TrainingError(LunaError, RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row); the message says why."""


class EvalError(LunaError, RuntimeError):
    """An evaluation that cannot run (bad input, checkpoint or config); the message names the culprit."""


class TokensError(LunaError, RuntimeError):
    """A directory that is not a finished, readable luna token export, or an export that cannot run or finish."""


class ServerError(LunaError, RuntimeError):
    """A luna WebSocket server refused a request or closed the stream (``code``: the protocol's error code)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"server error {code}: {message}")
        self.code = code


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (whitespace runs collapsed)."""
    return " ".join(str(e).split()) or type(e).__name__
