"""Stop signals for the command line: SIGINT, SIGTERM and SIGHUP stop a run as Ctrl-C does.

Kept out of ``_cli.py`` (argument parsing and printing): a signal watcher thread, a grace
deadline after which the process quits as ``kill -9`` would, and re-raising a stop that Python
dropped inside garbage collection.
"""

from __future__ import annotations

import _thread
import os
import select
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

#: Signals that stop a run as Ctrl-C does; the exit code is 128 + the signal number (130, 143,
#: 129), as a shell reports a process killed by that signal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


#: After a stop signal, how long the run may take to wind down (finish the numpy call it is in,
#: close the workers, drop partial files) before it quits at once, as ``kill -9`` would.
GRACE_SECONDS = 1.5
_REDELIVER = 0  # not a signal number: asks the watcher thread to raise the stop again


class _Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP, so they unwind the run as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stopped_message(signum: int, where: str) -> str:
    """The line printed when a signal stops a run: what stopped it and how to resume."""
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return (
        f"\nstream-cluster: {how}. Finished work is saved in {where}; rerun the same command to "
        f"resume."
    )


class StopOnSignals:
    """While active, SIGINT, SIGTERM and SIGHUP stop the run the way Ctrl-C does, promptly.

    Batch systems (Slurm, systemd, ``timeout``) and closing terminals stop programs with SIGTERM
    and SIGHUP, not Ctrl-C. Each raises :class:`_Stopped` (a ``KeyboardInterrupt``) in the main
    thread, so the run winds down as after Ctrl-C: decode workers closed, ``*.partial`` files
    dropped, lock released. Python runs that handler only between bytecodes, and one numpy call
    of a large PCA update can take seconds; so a thread woken by the signal (through
    :func:`signal.set_wakeup_fd`) quits the process at once if the run has not ended
    :data:`GRACE_SECONDS` later, and so does a second signal. Quitting at once is what ``kill
    -9`` does, which the run folder is built to survive. When the exception lands where Python
    cannot raise it (a weakref callback or ``__del__`` running in garbage collection prints
    "Exception ignored" and drops it), it is delivered again. A signal ignored when the program
    started (``nohup``, ``&`` in scripts) stays ignored. Outside the main thread nothing is
    installed. ``where`` names the run folder in the messages.
    """

    def __init__(self) -> None:
        self.where = "the run folder"
        self._stopping: list[int] = []
        self._redeliver = False
        self._done = threading.Event()
        self._quiet = False
        self._previous: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._old_hook = sys.unraisablehook

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._redeliver:
            self._redeliver = False
        elif self._stopping:
            os._exit(128 + signum)
        self._stopping.append(signum)
        raise _Stopped(signum)

    def _unraisable(self, info: Any) -> None:
        if isinstance(info.exc_value, _Stopped) and self._pipe is not None:
            # Dropped inside garbage collection; raising again here would be dropped too, so
            # the watcher raises it again once the main thread has moved on.
            self._redeliver = True
            os.write(self._pipe[1], bytes([_REDELIVER]))
            return
        self._old_hook(info)

    def _watch(self, read_fd: int) -> None:
        deadline: float | None = None
        signum = 0
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not select.select([read_fd], [], [], wait)[0]:
                    break  # the grace period is over
                data = os.read(read_fd, 64)
                if not data:
                    return  # the block ended
                for byte in data:
                    if byte in STOP_SIGNALS and deadline is None:
                        signum, deadline = byte, time.monotonic() + GRACE_SECONDS
                    elif byte == _REDELIVER:
                        time.sleep(0.01)
                        _thread.interrupt_main(signal.Signals(self._stopping[-1]))
        except OSError:
            return
        finally:
            os.close(read_fd)
        if self._done.is_set():
            return
        if not self._quiet:  # the run has said it stopped
            say(stopped_message(signum, self.where))
        os._exit(128 + signum)

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._handler)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        sys.unraisablehook = self._unraisable
        threading.Thread(target=self._watch, args=(read_fd,), name="stop-deadline",
                         daemon=True).start()  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stopping and self._pipe is not None:
            # A stop is under way: the deadline also covers the rest of the exit (worker pools
            # joined at interpreter shutdown, which can take seconds when the stop came while a
            # pool was starting), so the process ends within GRACE_SECONDS of the signal.
            self._quiet = True
            return
        self._done.set()
        if self._pipe is None:
            return
        sys.unraisablehook = self._old_hook
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        os.close(self._pipe[1])  # the watcher reads end-of-file and returns


def say(text: str) -> None:
    """Print to stderr; a terminal that hung up (SIGHUP) must not turn a clean stop into a crash."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass
