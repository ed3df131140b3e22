"""``AsyncClient.stream``: the same policies as ``request``, bodies streamed both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shoal._errors import UpstreamConnectError, UpstreamStatusError
from shoal.client import AsyncClient, Request, RetryPolicy, StreamingResponse
from shoal.discovery import StaticResolver


class FakeStreamingTransport:
    """Answers from a script of statuses (or errors); records what each attempt sent."""

    def __init__(self, script: list[int | Exception]) -> None:
        self.script = script
        self.sent: list[tuple[str, bytes]] = []
        self.closed = 0

    async def handle_async_stream(self, request: Request) -> StreamingResponse:
        body = request.body or b""
        if request.stream is not None:
            body = b"".join([c async for c in request.stream])
        self.sent.append((request.url, body))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step

        async def chunks() -> AsyncIterator[bytes]:
            yield b"he"
            yield b"llo"

        async def close() -> None:
            self.closed += 1

        return StreamingResponse(step, {}, [], chunks(), close, instance=request.url)

    async def handle_async_request(self, request: Request) -> object:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def client(transport: FakeStreamingTransport) -> AsyncClient:
    return AsyncClient(
        service="t", transport=transport,  # type: ignore[arg-type]
        resolver=StaticResolver({"users": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}),
        retry=RetryPolicy(backoff_initial=0.001, backoff_max=0.001),
    )


async def test_streams_the_response_body() -> None:
    transport = FakeStreamingTransport([200])
    response = await client(transport).stream("GET", "http://users/x")
    assert response.status == 200
    assert [c async for c in response] == [b"he", b"llo"]
    await response.aclose()
    assert transport.closed == 1


async def test_a_get_is_retried_on_503_on_another_instance() -> None:
    transport = FakeStreamingTransport([503, 200])
    response = await client(transport).stream("GET", "http://users/x")
    assert response.status == 200
    assert response.attempts == 2
    assert transport.sent[0][0] != transport.sent[1][0]
    assert transport.closed == 1  # the 503 was read and released


async def test_a_streamed_body_is_sent_once_and_never_retried() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    transport = FakeStreamingTransport([UpstreamConnectError("down", service="users"), 200])
    with pytest.raises(UpstreamConnectError):
        await client(transport).stream("PUT", "http://users/x", body=body())
    assert len(transport.sent) == 1
    assert transport.sent[0][1] == b"ab"


async def test_a_bytes_body_is_replayable() -> None:
    transport = FakeStreamingTransport([503, 200])
    response = await client(transport).stream("PUT", "http://users/x", body=b"payload")
    assert response.status == 200
    assert [b for _, b in transport.sent] == [b"payload", b"payload"]


async def test_a_final_5xx_raises_with_its_body() -> None:
    transport = FakeStreamingTransport([500])
    with pytest.raises(UpstreamStatusError) as info:
        await client(transport).stream("GET", "http://users/x")
    assert info.value.body == b"hello"
