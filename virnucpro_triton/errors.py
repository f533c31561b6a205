"""The base of every error whose message is meant for the user as it is.

The CLI catches `VirnucproError` (and OSError) in one place and prints the message as one line,
without a traceback; anything else is a bug and keeps its traceback. Each error class stays
beside the code that raises it; those that several packages raise live here.
"""

from __future__ import annotations


class VirnucproError(Exception):
    """A problem the user can fix; the message says which record, file or server, and what."""

    # Whether `predict --resume` can go on after this error: not when the input or the
    # settings are what is wrong, as the same command would meet it again.
    resumable = True


class ClientError(VirnucproError, RuntimeError):
    """The server cannot be reached or refused a request; the message is for the user."""
