"""The report's pieces: HTML pages, plots, montages, the 2-D map, thumbnails, the result
files (``labels.csv``, ``run.json``) and the page assets.

May import: ``parallel``, ``memory`` and every layer below them.
"""

from __future__ import annotations
