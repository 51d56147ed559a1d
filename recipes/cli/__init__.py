"""The `r1` command line: `main` dispatches each subcommand to its module, one way (no module here imports
`main`): `fit` (LightningCLI, `fit.py`), `list` (`registry.py`), `compare`, `run` (`stages.py`), `cloud`, and
`subspaces` (`recipes.safety_subspaces`)."""

from recipes.cli.main import main

__all__ = ["main"]
