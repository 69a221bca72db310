"""Module-level task functions for the executor tests (workers import them by name)."""

from __future__ import annotations

import os
import time


def square(x: int) -> int:
    """x squared."""
    return x * x


def die_on_13(x: int) -> int:
    """x, except that 13 kills the worker process (as a segfaulting decoder would)."""
    if x == 13:
        os._exit(3)
    time.sleep(0.01)
    return x


def pid_after(x: int) -> tuple[float, int]:
    """When the shard started (monotonic clock) and in which process; shard 0 is slow."""
    start = time.monotonic()
    if x == 0:
        time.sleep(1.0)
    return (start if x else time.monotonic()), os.getpid()
