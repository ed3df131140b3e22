"""The resilient service-to-service client.

::

    client = shoal.client.AsyncClient(service="orders")   # endpoints from $SHOAL_DISCOVERY
    user = (await client.get("http://users/users/42")).json()

Logical service names in URLs; per call: discovery-fed load balancing (P2C least-outstanding or
round-robin) with outlier ejection, deadline propagation, bulkhead, circuit breaker, retries
under a per-client budget, and declared fallbacks. :class:`Client` is the blocking twin for
Flask services. The policy cores are pure classes, usable and testable on their own.
"""

from shoal._errors import RequestBodyError, UpstreamResetError, UpstreamTransportError
from shoal.client._async import AsyncClient
from shoal.client._balancer import (
    Balancer,
    Instance,
    InstanceTable,
    LeastOutstandingBalancer,
    RoundRobinBalancer,
)
from shoal.client._breaker import (
    BreakerPolicy,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)
from shoal.client._bulkhead import Bulkhead, BulkheadPolicy
from shoal.client._outlier import EjectionEvent, OutlierDetector, OutlierPolicy
from shoal.client._retry import RetryBudget, RetryBudgetPolicy, RetryPolicy, parse_retry_after
from shoal.client._sync import Client
from shoal.client._transport import (
    AsyncStreamingTransport,
    AsyncTransport,
    MockTransport,
    Request,
    Response,
    StreamingResponse,
    SyncTransport,
    Timeouts,
)
from shoal.client._upstream import Fallback

__all__ = [
    "AsyncClient",
    "AsyncStreamingTransport",
    "AsyncTransport",
    "Balancer",
    "BreakerPolicy",
    "BreakerState",
    "BreakerTransition",
    "Bulkhead",
    "BulkheadPolicy",
    "CircuitBreaker",
    "Client",
    "EjectionEvent",
    "Fallback",
    "Instance",
    "InstanceTable",
    "LeastOutstandingBalancer",
    "MockTransport",
    "OutlierDetector",
    "OutlierPolicy",
    "Request",
    "RequestBodyError",
    "Response",
    "RetryBudget",
    "RetryBudgetPolicy",
    "RetryPolicy",
    "RoundRobinBalancer",
    "StreamingResponse",
    "SyncTransport",
    "Timeouts",
    "UpstreamResetError",
    "UpstreamTransportError",
    "parse_retry_after",
]
