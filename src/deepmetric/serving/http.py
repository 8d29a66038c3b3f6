"""The HTTP layer under the app: uvicorn's h11 protocol with JSON 400s, and a listening socket that keeps
TCP_NODELAY on every accepted connection.

- uvicorn answers a request it cannot parse (``Content-Length: abc``, a broken request line) itself, before the
  app sees it, with a ``text/plain`` 400. :class:`JsonErrorH11Protocol` sends the service's JSON error shape
  (``{"error": "bad_request", "message": …}``) instead.
- asyncio turns TCP_NODELAY on for an accepted connection only when the listening socket says ``proto ==
  IPPROTO_TCP``. uvicorn's own ``bind_socket`` (its ``--workers N`` path) leaves ``proto`` at 0, so with several
  workers Nagle's algorithm stays on and every keep-alive response waits ~40 ms for the client's delayed ACK
  (Kludex/uvicorn#3149). :func:`bind_tcp_socket` binds with ``IPPROTO_TCP``.
"""

from __future__ import annotations

import json
import socket

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

BAD_REQUEST_MESSAGE = ("invalid HTTP request: the request line or a header could not be parsed "
                       "(e.g. a non-numeric Content-Length)")


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering unparseable requests with the JSON error shape."""

    def send_400_response(self, msg: str) -> None:
        body = error_body("bad_request", BAD_REQUEST_MESSAGE)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def bind_tcp_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket for ``host:port`` created with ``proto=IPPROTO_TCP`` (so that asyncio sets
    TCP_NODELAY on the connections it accepts), inheritable by worker processes. ``OSError`` names the
    address when it cannot be bound."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                               flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock
