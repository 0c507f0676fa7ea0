"""The teardown registry: every started server (Compose or simulator) is stopped at exit or on SIGTERM.

Servers register while up (``_register``) and leave when stopped (``_unregister``);
``teardown_all`` runs at interpreter exit. SIGTERM is turned into ``KeyboardInterrupt``
(what Ctrl-C raises) so that context managers and pytest's finalizers run first, unless
another handler was installed before ours, which is then chained after the teardown.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
from typing import Any, Protocol

__all__ = ["teardown_all"]


class Stoppable(Protocol):
    def stop(self) -> None: ...


_ACTIVE: dict[int, Stoppable] = {}
_ACTIVE_LOCK = threading.Lock()
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


def _install_handlers() -> None:
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
        _install_handlers()
        _ACTIVE[id(server)] = server


def _unregister(server: Stoppable) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.pop(id(server), None)
