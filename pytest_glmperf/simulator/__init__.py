"""The built-in SGLang simulator: an engine model behind a real HTTP server on loopback.

Run it with ``python -m pytest_glmperf.simulator [SGLang flags] [--host H] [--port N]
[--time-scale K] [--sim-* flags]``; it prints one JSON line
``{"event": "listening", "host": ..., "port": N, "pid": ...}`` and serves until SIGTERM.

``create_app(argv)`` builds the ASGI app in-process (imported lazily, so importing the
package, e.g. for ``types``, stays cheap and free of import cycles).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SimulatorApp", "create_app", "parse_args"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
