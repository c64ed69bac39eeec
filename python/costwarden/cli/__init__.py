"""The ``costwarden`` command line (click): one module per command group, registered
explicitly in :mod:`costwarden.cli.main`; shared helpers in :mod:`costwarden.cli._common`."""

from .main import main

__all__ = ["main"]
