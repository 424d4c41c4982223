"""`python -m selfredteam ...` is the `selfredteam` command (handy in scripts and benchmarks)."""

from selfredteam.cli import app

app(prog_name="selfredteam")
