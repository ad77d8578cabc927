"""`python -m gateway.cli ...`: the `tailor` command."""

from gateway.cli import app

app()
