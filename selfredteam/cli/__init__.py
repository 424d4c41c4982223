"""`selfredteam` command line: one entry point, a subcommand per job.

Errors a user can cause are printed as one paragraph (what, where, what to do) with a non-zero
exit code and no traceback; `--debug` (or SELFREDTEAM_DEBUG=1) shows the traceback. The commands
live in `run` (play, train, self-distill, export, config, setup), `evaluate` (eval, attack,
diversity, report, judge) and `experiments` (study, exploit, crossplay, redteam).
"""

import importlib

from selfredteam.cli.common import app

for _module in ("run", "evaluate", "experiments"):  # importing registers the commands, in --help order
    importlib.import_module(f"selfredteam.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console script shim
    app()
