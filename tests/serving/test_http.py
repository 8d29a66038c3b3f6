"""The listening socket keeps TCP_NODELAY on accepted connections (real asyncio server, real loopback)."""

from __future__ import annotations

import asyncio
import socket

from deepmetric.serving.http import bind_tcp_socket


def _accepted_nodelay(listener: socket.socket) -> int:
    """TCP_NODELAY of a connection accepted by an asyncio server on ``listener``."""
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main():
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    return seen[0]


def test_bound_socket_keeps_tcp_nodelay():
    sock = bind_tcp_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP and sock.get_inheritable()
    assert _accepted_nodelay(sock) == 1


def test_uvicorn_bind_socket_loses_it():
    # Why bind_tcp_socket exists (Kludex/uvicorn#3149, uvicorn 0.54.0 as pinned): the socket uvicorn binds for
    # --workers N has proto 0, and asyncio then leaves Nagle's algorithm on. If a uvicorn upgrade fixes this,
    # this test fails and the workaround can go.
    import uvicorn

    config = uvicorn.Config("x:y", host="127.0.0.1", port=0)
    sock = config.bind_socket()
    sock.listen()
    assert sock.proto == 0 and _accepted_nodelay(sock) == 0
