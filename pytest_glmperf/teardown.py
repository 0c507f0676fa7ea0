"""The teardown registry: every started server (Compose or simulator) is stopped at exit or on SIGTERM.

Servers register while up (``_register``) and leave when stopped (``_unregister``);
``teardown_all`` runs at interpreter exit. SIGTERM is turned into ``KeyboardInterrupt``
(what Ctrl-C raises) so that context managers and pytest's finalizers run first, unless
another handler was installed before ours, which is then chained after the teardown.
Inside an event loop (``run_async``) SIGTERM first cancels the main task, as asyncio does
with Ctrl-C, so a workload's partial results are judged and written before it unwinds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import signal
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol, TypeVar

__all__ = ["cancelled_by_sigterm", "install_signal_handlers", "run_async", "teardown_all"]

T = TypeVar("T")


class Stoppable(Protocol):
    def stop(self) -> None: ...


_ACTIVE: dict[int, Stoppable] = {}
_ACTIVE_LOCK = threading.Lock()
_DEFERRING = False  # a cancelled_by_sigterm is active (one at a time: nested ones pass through)
_HANDLERS_INSTALLED = False
_PREVIOUS_SIGTERM: Any = None


def teardown_all() -> None:
    """Stop every server this process started and has not stopped (``keep_running`` ones stay)."""
    with _ACTIVE_LOCK:
        servers = list(_ACTIVE.values())
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    previous = _PREVIOUS_SIGTERM
    if callable(previous):
        teardown_all()
        previous(signum, frame)
        return
    # Behave like Ctrl-C: unwinding runs `with` blocks and pytest finalizers (partial reports
    # get written); atexit then tears down whatever is still registered.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut `down` short
    raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")


def install_signal_handlers() -> None:
    """SIGTERM behaves as Ctrl-C (records kept, partial report, summary) and atexit stops
    what is still registered; idempotent. Installed by every session, whatever its server."""
    global _HANDLERS_INSTALLED, _PREVIOUS_SIGTERM
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(teardown_all)
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current in (signal.SIG_IGN, _on_sigterm):
        return
    _PREVIOUS_SIGTERM = current if callable(current) else None
    signal.signal(signal.SIGTERM, _on_sigterm)


def _register(server: Stoppable) -> None:
    with _ACTIVE_LOCK:
        install_signal_handlers()
        _ACTIVE[id(server)] = server


def _unregister(server: Stoppable) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.pop(id(server), None)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, with SIGTERM handled the way asyncio handles Ctrl-C.

    A Python-level handler that raises inside a running loop lands in whichever task runs at
    that instant; the main task can then be left pending when the loop closes, its ``finally``
    blocks (the partial level's verdict and report) never run. Here SIGTERM only cancels the
    main task; once that has unwound, the usual SIGTERM handler runs.
    """
    return asyncio.run(cancelled_by_sigterm(main))


async def cancelled_by_sigterm(main: Awaitable[T]) -> T:
    """Await ``main`` in a loop someone else runs (pytest-asyncio's), with SIGTERM cancelling
    the current task first, as ``run_async`` does."""
    global _DEFERRING
    previous = signal.getsignal(signal.SIGTERM)
    if _DEFERRING or not callable(previous) or threading.current_thread() is not threading.main_thread():
        return await main  # default or ignored SIGTERM, or already deferred: nothing to do here
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received = False

    def cancel_once() -> None:
        nonlocal received
        if not received and task is not None:
            received = True
            task.cancel()

    loop.add_signal_handler(signal.SIGTERM, cancel_once)
    _DEFERRING = True
    try:
        return await main
    finally:
        _DEFERRING = False
        loop.remove_signal_handler(signal.SIGTERM)  # leaves SIG_DFL behind: put ours back
        signal.signal(signal.SIGTERM, previous)
        if received:
            previous(signal.SIGTERM, None)
