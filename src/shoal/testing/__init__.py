"""Testing tools for Shoal services: log capture and real server processes.

The pytest plugin (auto-loaded when Shoal is installed) adds the ``shoal_server`` fixture.
"""

from shoal._logging import capture_logs
from shoal.testing._process import ServerProcess, free_port, run_server, wait_until

__all__ = ["ServerProcess", "capture_logs", "free_port", "run_server", "wait_until"]
