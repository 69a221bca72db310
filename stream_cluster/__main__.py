"""``python -m stream_cluster`` is the same as the ``stream-cluster`` command."""

from __future__ import annotations

from stream_cluster._cli.main import main

raise SystemExit(main())
