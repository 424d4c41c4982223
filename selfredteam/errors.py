"""User-facing errors.

Every error a user can cause (bad file, bad config, unreachable endpoint) is raised as a
`UserError` whose message is one paragraph: what went wrong, where, and what to do. The CLI
prints that paragraph without a traceback; `--debug` shows the traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by input or environment, reported without a traceback."""


class ConfigError(UserError):
    """An unknown preset, key or a value of the wrong type."""


class DataError(UserError):
    """A malformed seed or benchmark file (the message names the file and line)."""


class EndpointError(UserError):
    """An HTTP endpoint (policy or judge) stayed unreachable or failing after retries."""


class EndpointRejected(EndpointError):
    """The endpoint answered with a 4xx other than 429: the request itself was refused (a field the
    server does not know, a bad model name); retrying the same request cannot help."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status, self.body = status, body


class TrainingDiverged(UserError):
    """The gradient stayed NaN or infinite for several optimizer steps in a row (each was skipped,
    so the weights stayed finite); the run stops with a checkpoint of those weights."""
