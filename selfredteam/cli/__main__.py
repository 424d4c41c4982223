"""`python -m selfredteam.cli ...` is the `selfredteam` command."""

from selfredteam.cli import app

app(prog_name="selfredteam")
