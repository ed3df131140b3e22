"""The exception tree: one root for everything a user can catch, honest transport errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import shoal
import shoal.client
from shoal import (
    ShoalError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResetError,
    UpstreamTransportError,
)
from shoal.client import RequestBodyError

PUBLIC_MODULES = ("shoal", "shoal.client", "shoal.discovery", "shoal.testing",
                  "shoal.platform.gateway", "shoal.platform.deploy")


def test_connect_and_reset_are_siblings_under_the_transport_error():
    assert issubclass(UpstreamTransportError, UpstreamError)
    assert issubclass(UpstreamConnectError, UpstreamTransportError)
    assert issubclass(UpstreamResetError, UpstreamTransportError)
    assert not issubclass(UpstreamResetError, UpstreamConnectError)
    assert not issubclass(UpstreamConnectError, UpstreamResetError)


def catches(clause: type[BaseException], exc: BaseException) -> bool:
    """Whether ``except clause:`` catches ``exc``."""
    try:
        raise exc
    except clause:
        return True
    except BaseException:  # (the point: anything else passes the clause)
        return False


def test_except_upstream_connect_error_does_not_catch_a_reset_but_the_transport_error_does():
    reset = UpstreamResetError("reset", service="users")
    connect = UpstreamConnectError("refused", service="users")
    assert not catches(UpstreamConnectError, reset)
    assert catches(UpstreamConnectError, connect)
    assert catches(UpstreamTransportError, reset)
    assert catches(UpstreamTransportError, connect)
    assert catches(ShoalError, reset)


def test_a_failing_request_body_is_an_upstream_error_but_no_transport_error_of_the_service():
    assert issubclass(RequestBodyError, UpstreamError)
    assert not issubclass(RequestBodyError, UpstreamTransportError)


def test_every_exception_a_public_module_exports_is_a_shoal_error():
    exported = {
        f"{name}.{attr}": obj
        for name in PUBLIC_MODULES
        for attr in importlib.import_module(name).__all__
        if inspect.isclass(obj := getattr(importlib.import_module(name), attr))
        and issubclass(obj, BaseException)
    }
    assert "shoal.platform.gateway.AuthError" in exported
    assert {n for n, cls in exported.items() if not issubclass(cls, ShoalError)} == set()


def test_no_shoal_exception_bypasses_except_exception():
    # A BaseException outside Exception escapes every ``except Exception`` safety net.
    strays = []
    for info in pkgutil.walk_packages(shoal.__path__, "shoal."):
        if info.name.endswith(".__main__"):
            continue  # (importing it runs the CLI)
        module = importlib.import_module(info.name)
        strays += [
            f"{info.name}.{name}" for name, cls in vars(module).items()
            if inspect.isclass(cls) and cls.__module__ == info.name
            and issubclass(cls, BaseException) and not issubclass(cls, Exception)
        ]
    assert strays == []


def test_the_transport_family_is_exported_in_sorted_public_lists():
    for module in (shoal, shoal.client):
        assert module.__all__ == sorted(module.__all__)
        assert "UpstreamTransportError" in module.__all__
        assert "UpstreamResetError" in module.__all__
    assert "UpstreamConnectError" in shoal.__all__
