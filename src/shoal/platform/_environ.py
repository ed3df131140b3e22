"""The environment a replica starts with: least privilege, not the control plane's whole one.

A replica gets three things and nothing else:

1. the variables of the control plane's environment on an allow-list (:data:`INHERITED`,
   :data:`INHERITED_PATTERN`): what a process needs to run at all (``PATH``, ``HOME``, the
   locale, the interpreter's settings, CA bundles, ``TMPDIR``), never a credential; plus the
   ones the service's ``env_passthrough`` names (and, for the gateway, the variables its
   routes' ``auth.secret_env`` name);
2. the variables the platform sets for it (``PORT``, ``SHOAL_SERVICE``, discovery, the
   read-only credentials, ...);
3. the service's ``env`` from the spec, which wins over both.

So the fleet's admin token, ``SHOAL_JWT_SECRET`` or a cloud key exported in the shell that ran
``shoal up`` stay out of every replica unless the spec names them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: Variables of the parent's environment every replica inherits (when they are set).
INHERITED: frozenset[str] = frozenset({
    # finding programs and libraries, the user
    "PATH", "HOME", "USER", "LOGNAME", "LD_LIBRARY_PATH",
    # locale and time zone (and ``LC_*``, below)
    "LANG", "LANGUAGE", "TZ",
    # temporary files, CA certificates
    "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
    # the virtualenv (``PYTHONPATH`` and the interpreter's other settings: below)
    "VIRTUAL_ENV",
    # the chassis' log level, so ``SHOAL_LOG_LEVEL=DEBUG shoal up`` reaches every replica
    "SHOAL_LOG_LEVEL",
})
#: Patterns of inherited variables: the locale categories (``LC_ALL``, ``LC_CTYPE`` ...), the
#: interpreter's settings (``PYTHONPATH``, ``PYTHONHASHSEED``, ``PYTHONWARNINGS`` ...: ``PYTHON``
#: and letters, no underscore, so ``PYTHON_API_KEY`` stays out), coverage measurement of
#: subprocesses (coverage.py's ``COVERAGE_*``, pytest-cov's ``COV_CORE_*``).
INHERITED_PATTERN = re.compile(r"LC_[A-Z]+|PYTHON[A-Z0-9]+|COVERAGE_[A-Z_]+|COV_CORE_[A-Z_]+")


def inherited(parent: Mapping[str, str], passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The part of ``parent`` a replica keeps: the allow-list, plus the names in
    ``passthrough`` (those that are set; a missing one is simply absent)."""
    extra = set(passthrough)
    return {name: value for name, value in parent.items()
            if name in INHERITED or name in extra or INHERITED_PATTERN.fullmatch(name)}
