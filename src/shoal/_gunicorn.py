"""gunicorn pieces for WSGI apps: a draining threaded worker and JSON logging."""

from __future__ import annotations

import logging
import threading
from types import FrameType
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.workers.gthread import ThreadWorker

from shoal._logging import configure_logging
from shoal._registration import bound_port, start_registration
from shoal._serve import wait_drained
from shoal._settings import Settings


class DrainingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread worker whose SIGTERM fails readiness and drains before it stops accepting."""

    _drain_started = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started:
            return
        self._drain_started = True
        stop = super().handle_exit

        def drain() -> None:
            wait_drained(Settings.from_env())
            stop(sig, frame)

        threading.Thread(target=drain, name="shoal-drain", daemon=True).start()

    def run(self) -> None:
        # In the worker, where requests and the drain happen (threads do not survive fork).
        settings = Settings.from_env()
        registrar = start_registration(settings, port=bound_port(self.sockets, settings.port))
        try:
            super().run()
        finally:
            if registrar is not None:
                registrar.close()


class JsonGunicornLogger(GunicornLogger):  # type: ignore[misc]
    """gunicorn's error log as Shoal JSON lines on stdout; its access log stays off."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.handlers.clear()
            log.propagate = log is self.error_log
        self.access_log.disabled = True
        configure_logging(logging.getLevelName(self.error_log.level or logging.INFO))
