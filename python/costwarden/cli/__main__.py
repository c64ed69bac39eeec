"""``python -m costwarden.cli``: the same as the ``costwarden`` command."""

from .main import main

main(prog_name="costwarden")
