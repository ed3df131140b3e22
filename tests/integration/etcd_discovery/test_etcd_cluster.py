"""etcd discovery against a real three-member cluster losing a member, the leader included."""

from __future__ import annotations

import pytest

from shoal.discovery import EtcdResolver

from .conftest import BACKEND, TTL, holds_for, wait_until

pytestmark = pytest.mark.integration


def urls(resolver: EtcdResolver, service: str) -> list[str]:
    return sorted(e.url for e in resolver.endpoints(service))


@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_registration_keepalive_and_watch_survive_losing_a_member(
        victim, etcd_factory, root, resolvers, servers):
    cluster = etcd_factory(3)
    leader = cluster.leader()
    index = leader if victim == "leader" else (leader + 1) % 3
    # Everyone talks to the victim first, so losing it forces every stream to fail over.
    order = [index] + [i for i in range(3) if i != index]
    discovery = cluster.discovery(root, order)
    resolver = resolvers(discovery)
    first = servers(BACKEND, discovery=discovery, service="users")
    wait_until(lambda: urls(resolver, "users") == [first.url], 10, "the instance registered")

    cluster.kill(index)

    # Keep-alives moved to another member: the 2 s lease never lapses.
    holds_for(lambda: urls(resolver, "users") == [first.url], 2 * TTL + 0.5,
              "the instance stays registered after the member is gone")
    assert "registration.lease_lost" not in [e.get("event") for e in first.log_lines()]
    # The watch moved too: an instance registering now is seen.
    second = servers(BACKEND, discovery=discovery, service="users")
    wait_until(lambda: urls(resolver, "users") == sorted([first.url, second.url]), 10,
               "the new instance seen through the failed-over watch")
    # And a drain still deregisters at once through the remaining members.
    first.terminate()
    wait_until(lambda: urls(resolver, "users") == [second.url], 3, "drain deregistered")
    assert first.wait(15) == 0
