"""``python -m stream_cluster`` is the same as the ``stream-cluster`` command."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main())
