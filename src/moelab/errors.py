"""The errors moelab explains in one line (`moelab <stage>: error: ...`, exit status 2).

Every message names the file or key, says what is wrong and what to do. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib


class MoelabError(Exception):
    """Base of every error the CLI reports as one line."""


class ConfigError(MoelabError, ValueError):
    """A bad value in params.yaml or on the command line."""


class DataError(MoelabError, ValueError):
    """Missing, corrupt or mismatched data (a corpus or a prepared split)."""


class CheckpointError(MoelabError, RuntimeError):
    """A checkpoint that is missing, unreadable or belongs to another run."""


class NonFiniteLoss(MoelabError, RuntimeError):
    """Training produced a NaN/inf loss or gradient norm."""


class LockError(MoelabError, RuntimeError):
    """Another process holds the directory this command writes to."""


def did_you_mean(value, allowed) -> str:
    """' (did you mean 'x'?)' when `value` is close to one of `allowed`, else ''."""
    hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
