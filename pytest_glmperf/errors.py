"""Exceptions raised by pytest-glmperf.

The whole tree::

    GlmperfError
    ├── ConfigError        bad option, threshold, profile or level list (names the key to fix)
    ├── ServerStartError   the server under test could not be brought up
    │   └── ServerNotReady readiness was not reached before the deadline
    ├── MeasurementInvalid the client itself distorted the measurement
    ├── MeasurementError   a measurement could not be made (calibration failed, a load task raised)
    └── RecordWriteError   a finished request could not be written to records.jsonl

Per-request HTTP failures are never raised: they are recorded on the RequestRecord.
``InconclusiveWarning`` (a UserWarning) marks a verdict that rests on too little evidence.
"""

from __future__ import annotations


class GlmperfError(Exception):
    """Root of every error this plugin raises on purpose."""


class ConfigError(GlmperfError):
    """A setting is wrong; the message names the setting and what would be accepted."""


class ServerStartError(GlmperfError):
    """The server could not be started; the message carries the reason and a log tail."""


class ServerNotReady(ServerStartError):
    """The server did not become ready (GET /health_generate == 200) in time."""


class MeasurementInvalid(GlmperfError):
    """The client was the bottleneck, so the numbers describe the client, not the server."""


class MeasurementError(GlmperfError):
    """The measurement could not be made; the level is an error, never a pass or a fail."""


class RecordWriteError(GlmperfError):
    """records.jsonl could not be written: evidence would be lost, so the run fails loudly."""


class InconclusiveWarning(UserWarning):
    """A verdict or a regression check rests on too little evidence to tell."""
