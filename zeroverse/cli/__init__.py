"""`zeroverse` command line: a thin click shell that builds configs and calls one stage each.

Heavy packages (bpy, ray, torch) are imported inside the command that needs them, so
`zeroverse --help` answers at once.
"""

from __future__ import annotations

import logging
import sys

import click

class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is logged (click's test runner swaps it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(verbose: bool | None) -> None:
    """One handler on zeroverse's own loggers (zeroverse.*, pipelines.*): INFO by default (what a
    run decided: resumed from where, TensorBoard missing ...), DEBUG with --verbose, warnings only
    with --quiet. Other libraries' loggers (Ray's) are left as they are."""
    level = logging.DEBUG if verbose else logging.WARNING if verbose is False else logging.INFO
    for name in ("zeroverse", "pipelines"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(handler)  # a second invocation in one process (tests) replaces it
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)  # records still propagate: a host's root handlers (pytest's caplog) see them too


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zeroverse")
@click.option("--verbose/--quiet", default=None, help="Log debug messages / only warnings and errors (default: info). Before the command: `zeroverse --quiet render ...`.")
def main(verbose) -> None:
    """Procedural Zeroverse shapes, a Blender render farm on Ray, and a GS-LRM trainer.

    Typical run: `zeroverse generate --n 1000`, then `zeroverse render --views 32`, then
    `zeroverse train-lrm`. Every command works on one ROOT directory (default ./zeroverse-data).
    """
    _configure_logging(verbose)



# The commands register themselves on `main` when their modules are imported.
from zeroverse.cli import farm, lrm  # noqa: E402,F401
