"""What every `selfredteam` command shares: the app, the consoles, option types, error handling.

Errors a user can cause are printed as one paragraph (what, where, what to do) with a non-zero
exit code and no traceback; `--debug` (or SELFREDTEAM_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from selfredteam.config import Config, ModelConfig, load_config
from selfredteam.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Online self-play red-teaming: one model attacks and defends, a judge scores.")
judge_app = typer.Typer(no_args_is_help=True, help="Fit and evaluate safety judges.")
app.add_typer(judge_app, name="judge")
console = Console(stderr=True)
# Tables go to stdout; when piped (CI logs, files) rich would squeeze them to 80 columns.
out_console = Console(width=None if sys.stdout.isatty() else 140)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="cpu-demo | cpu-safety | single-gpu | paper-8b")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of overrides.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


class _WarningHandler(logging.Handler):
    """Warnings of the `selfredteam` logger (input budgets, seed pools) as one console paragraph."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False)


@app.callback()
def _setup() -> None:
    logger = logging.getLogger("selfredteam")
    if not any(isinstance(h, _WarningHandler) for h in logger.handlers):
        logger.addHandler(_WarningHandler(logging.WARNING))
        logger.setLevel(logging.INFO)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError and Ctrl-C into a clear message and exit code, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug") or os.environ.get("SELFREDTEAM_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if debug:
                raise
            # Escaped: messages quote config sections like [model], which rich would eat as markup.
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Outputs written so far are kept.")
            raise typer.Exit(130) from None

    return wrapper


def config_from(preset: str, config: Path | None, sets: list[str] | None) -> Config:
    return load_config(preset, config, sets or [])


def announce_runtime(model: ModelConfig, threads: int, out: Path | None = None) -> dict[str, Any]:
    """Print the device and dtype (and why) at start; save them as OUT/runtime.json."""
    from selfredteam.policy.runtime import describe, runtime_info, save_runtime

    info = runtime_info(model, threads)
    console.print(f"Running on {describe(info)}.", highlight=False)
    if out is not None:
        save_runtime(out, info)
    return info


def warn_truncations(*holders: Any) -> dict[str, int]:
    """After a command: one warning line per input budget that cut something; the counts."""
    counts = {}
    for h in holders:
        counter = getattr(h, "truncation", None)
        if counter is None:
            continue
        counts[f"truncated/{counter.what.replace(' ', '_')}s"] = counter.count
        if counter.summary():
            console.print(f"[yellow]warning:[/] {escape(counter.summary())}", highlight=False)
    return counts


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def print_kv(title: str, d: dict[str, Any]) -> None:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in d.items():
        t.add_row(k, fmt(v))
    out_console.print(t)
