"""The command line (``stream-cluster``, ``python -m stream_cluster``): parses arguments,
builds a :class:`~stream_cluster.config.RunConfig`, calls the public API and renders progress.

May import: every other part of the package.
"""

from __future__ import annotations

from stream_cluster._cli.main import main

__all__ = ["main"]
