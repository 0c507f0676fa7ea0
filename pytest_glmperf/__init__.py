"""pytest-glmperf: LLM-serving performance as pytest assertions.

Public API (everything else is internal)::

    fixtures   glmperf_server, glmperf_client, glmperf_thresholds, glmperf_scenario,
               glmperf_capacity, glmperf_mixed, glmperf_level, glmperf_target
    classes    GlmperfServer, Agent, LevelResult, RegressionResult, Thresholds, RequestRecord,
               StreamingClient
"""

from .client import StreamingClient
from .errors import ConfigError, GlmperfError, MeasurementInvalid, ServerNotReady, ServerStartError
from .levels import GlmperfServer
from .records import RequestRecord
from .results import InconclusiveWarning, LevelResult, RegressionResult
from .scenarios import Agent
from .thresholds import Thresholds

__all__ = [
    "Agent",
    "ConfigError",
    "GlmperfError",
    "GlmperfServer",
    "InconclusiveWarning",
    "LevelResult",
    "MeasurementInvalid",
    "RegressionResult",
    "RequestRecord",
    "ServerNotReady",
    "ServerStartError",
    "StreamingClient",
    "Thresholds",
]
__version__ = "0.1.0"
