"""Testing tools for Shoal services: log capture, real server processes and a fake clock.

The pytest plugin (auto-loaded when Shoal is installed) adds the ``shoal_server`` fixture.
"""

from shoal._logging import capture_logs
from shoal.testing._clock import FakeClock
from shoal.testing._process import ServerProcess, free_port, run_server, wait_until

__all__ = ["FakeClock", "ServerProcess", "capture_logs", "free_port", "run_server", "wait_until"]
