"""What every stage shares: its own progress record in ``state.json`` and the progress it reports.

A stage is a generator function: it takes its inputs (stores, model, memory plan, settings) and
its :class:`StageRecord`, yields :class:`Progress` as it goes, and returns its output. It records
its resume point in the record only after the data it describes is durable. The runner turns
``Progress`` into ``ProgressEvent`` (adding memory figures) and does the timing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from stream_cluster.storage.checkpoint import RunState

__all__ = [
    "Background",
    "Progress",
    "ProgressEvent",
    "StageRecord",
    "in_background",
    "run_to_end",
    "same_key",
    "timed",
]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of ``stage``; ``skipped`` is the run's total so far, if known."""

    stage: str
    done: int
    total: int
    unit: str = "images"
    message: str = ""
    skipped: int | None = None


@dataclass(frozen=True)
class ProgressEvent:
    """One step of progress: ``done`` of ``total`` units in ``stage``, and memory right now."""

    stage: str
    done: int
    total: int
    unit: str
    rss_bytes: int
    budget: int
    skipped: int = 0
    message: str = ""


class StageRecord:
    """One stage's durable progress record (a view of its entry in ``state.json``)."""

    def __init__(self, state: RunState, name: str) -> None:
        self.state = state
        self.name = name

    def get(self, field: str, default: Any = None) -> Any:
        """A field of the record, or ``default``."""
        return self.state.stage(self.name).get(field, default)

    @property
    def data(self) -> dict[str, Any]:
        """The whole record (empty if the stage never ran)."""
        return self.state.stage(self.name)

    @property
    def done(self) -> bool:
        """Whether the stage finished."""
        return bool(self.get("done"))

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into the record and save ``state.json`` atomically."""
        self.state.update(self.name, **fields)

    def reset(self) -> None:
        """Forget the record: the stage runs again from the start."""
        self.state.reset([self.name])


#: Settings added to a stage's key after run folders were written without them, with the value
#: those folders used: an older folder still matches the default.
LATER_KEYS: dict[str, Any] = {"keep_pixels": "always"}
_MISSING = object()


def same_key(recorded: Any, current: dict[str, Any]) -> bool:
    """Whether a recorded settings key matches ``current`` on every setting ``current`` names.

    Settings a later version stopped counting (e.g. ``seed`` for the PCA) are ignored, so run
    folders written before still resume.
    """
    if not isinstance(recorded, dict):
        return False
    return all(recorded.get(k, LATER_KEYS.get(k, _MISSING)) == v for k, v in current.items())


class Background:
    """Progress of a stage running in a thread, handed to the thread that consumes it."""

    def __init__(self) -> None:
        self.events: queue.Queue[Progress | BaseException | None] = queue.Queue()
        self.stop = threading.Event()
        self.finished = False

    def drain(self, timeout: float = 0.2) -> Iterator[Progress]:
        """Yield what arrived within ``timeout``; raise the stage's exception if it failed."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if item is None:
                self.finished = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return


@contextmanager
def in_background(stage: Generator[Progress, None, Any]) -> Iterator[Background]:
    """Run a stage generator in a thread while the caller does other work.

    The thread stops the stage after the progress item it is at when the caller leaves the
    block (the stage's own cleanup runs: it is closed), and is joined.
    """
    bg = Background()

    def produce() -> None:
        try:
            for item in stage:
                bg.events.put(item)
                if bg.stop.is_set():
                    break
        except BaseException as exc:  # handed to the consuming thread, which raises it
            bg.events.put(exc)
        finally:
            stage.close()
            bg.events.put(None)

    thread = threading.Thread(target=produce, name="background-stage", daemon=True)
    thread.start()
    try:
        yield bg
    finally:
        bg.stop.set()
        thread.join()


T = TypeVar("T")


def timed(record: StageRecord, stage: Generator[Progress, None, T]) -> Generator[Progress, None, T]:
    """Run ``stage`` and record its wall time as the record's ``seconds`` (for a stage that runs
    in the background, beside another that the runner times)."""
    t0 = time.perf_counter()
    result = yield from stage
    record.update(seconds=time.perf_counter() - t0)
    return result


def run_to_end(gen: Generator[Any, None, T]) -> T:
    """Consume a progress generator and return what it returns (``StopIteration.value``)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            value: T = stop.value
            return value
