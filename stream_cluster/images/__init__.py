"""Images: find them (scan), read their headers, decode and letterbox them, and the decode
memory model.

May import: ``stream_cluster.config``, ``stream_cluster.errors`` (the bottom layer) only.
"""

from __future__ import annotations
