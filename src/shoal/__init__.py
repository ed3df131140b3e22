"""Shoal: the service chassis every Shoal service imports.

The framework adapters live in :mod:`shoal.fastapi` and :mod:`shoal.flask`; the resilient
client in :mod:`shoal.client`; test helpers in :mod:`shoal.testing`.
"""

from shoal._chassis import Chassis, CheckResult, ReadinessCheck
from shoal._context import (
    TraceContext,
    current_deadline,
    current_request_id,
    current_trace,
    deadline_scope,
    remaining_time,
)
from shoal._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    NoHealthyInstanceError,
    ProblemError,
    ShoalError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResetError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamTransportError,
)
from shoal._logging import Logger, configure_logging, get_logger
from shoal._settings import Settings

__all__ = [
    "BulkheadFullError",
    "Chassis",
    "CheckResult",
    "CircuitOpenError",
    "ConfigurationError",
    "DeadlineExceededError",
    "Logger",
    "NoHealthyInstanceError",
    "ProblemError",
    "ReadinessCheck",
    "Settings",
    "ShoalError",
    "TraceContext",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamResetError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "UpstreamTransportError",
    "configure_logging",
    "current_deadline",
    "current_request_id",
    "current_trace",
    "deadline_scope",
    "get_logger",
    "remaining_time",
]
