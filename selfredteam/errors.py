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
