"""Memory: the budget model of every stage, the planner that fits a run to a budget, and the
sampler that measures the process tree's RSS.

May import: ``model``, ``pca``, ``storage``, ``images`` and the bottom layer.
"""

from __future__ import annotations
