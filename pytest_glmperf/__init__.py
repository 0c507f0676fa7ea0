"""pytest-glmperf: LLM-serving performance as pytest assertions.

Public API (everything else is internal)::

    fixtures   glmperf_server, glmperf_client, glmperf_thresholds, glmperf_scenario,
               glmperf_capacity, glmperf_mixed, glmperf_level, glmperf_target
    classes    GlmperfServer, Agent, LevelResult, RegressionResult, Thresholds, RequestRecord,
               StreamingClient

The names load on first use (PEP 562): pytest imports this package for every run in an
environment where the plugin is installed, and most of those runs never measure anything.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and readers
    from .client import StreamingClient
    from .errors import (
        ConfigError,
        GlmperfError,
        InconclusiveWarning,
        MeasurementInvalid,
        ServerNotReady,
        ServerStartError,
    )
    from .levels import GlmperfServer
    from .records import RequestRecord
    from .results import LevelResult, RegressionResult
    from .scenarios import Agent
    from .thresholds import Thresholds

_WHERE = {
    "Agent": "scenarios", "ConfigError": "errors", "GlmperfError": "errors", "GlmperfServer": "levels",
    "InconclusiveWarning": "errors", "LevelResult": "results", "MeasurementInvalid": "errors",
    "RegressionResult": "results", "RequestRecord": "records", "ServerNotReady": "errors",
    "ServerStartError": "errors", "StreamingClient": "client", "Thresholds": "thresholds",
}
__all__ = [
    "Agent", "ConfigError", "GlmperfError", "GlmperfServer", "InconclusiveWarning", "LevelResult",
    "MeasurementInvalid", "RegressionResult", "RequestRecord", "ServerNotReady", "ServerStartError",
    "StreamingClient", "Thresholds",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *__all__]
