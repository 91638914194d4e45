"""Drain decision logs when the process is told to stop (SIGTERM)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("nudgeserve.decisions")


def install_sigterm_handler(
    logs: Iterable[Any], signals: Iterable[int] = (signal.SIGTERM,)
) -> Callable[[], None]:
    """On each of ``signals``: close every log (drain + flush), then do what the signal
    did before this handler was installed.

    logs: the ``DecisionLog`` objects to close (anything with ``close()``).
    signals: signal numbers; SIGTERM by default (add ``signal.SIGINT`` if wanted).

    Returns a function that restores the previous handlers. After the logs are closed,
    a previous Python handler is called; the default action is re-raised (the process
    then exits by that signal, so a supervisor sees the usual status); an ignored
    signal stays ignored. Must be called from the main thread (Python runs signal
    handlers there). An asyncio server should rather register
    ``loop.add_signal_handler(SIGTERM, ...)`` and ``await log.aclose()``.
    """
    logs = list(logs)
    signals = list(signals)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_sigterm_handler must be called from the main thread")
    for i, lg in enumerate(logs):
        if not callable(getattr(lg, "close", None)):
            raise TypeError(f"logs[{i}] has no close() method: {type(lg).__name__}")
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum: int, frame: Any) -> None:
        for lg in logs:
            try:
                lg.close()
            except Exception:  # one stuck log must not keep the others from closing
                log.exception("closing %r on signal %d failed", lg, signum)
        prev = previous.get(signum)
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for s in signals:
        signal.signal(s, handler)

    def uninstall() -> None:
        for s, prev in previous.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)

    return uninstall
