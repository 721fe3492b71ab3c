"""Run the service: in the foreground (``cxrkit serve``) or on a background thread.

The background server is for notebooks and tests: it binds its own socket first (port 0
picks a free one), so the address is known before uvicorn starts and no other process
can take the port in between.

Both close slow connections. uvicorn times out only an idle keep-alive connection
(``timeout_keep_alive``); a client that sends half a request line or half its headers,
or stops in the middle of an upload, held its connection (and a file descriptor) for
ever. :class:`TimeoutH11Protocol` adds the missing deadlines: the headers of each
request must arrive within :data:`HEADER_TIMEOUT_S` (whatever the pace: trickling one
byte at a time does not extend it; answered ``408 Request Timeout``), a request body
must not pause for more than :data:`READ_TIMEOUT_S` between chunks, and the whole body
must arrive within :data:`BODY_TIMEOUT_S` of the headers (a body trickled in just
inside the pause limit does not hold the connection for ever; the connection is closed). Written by hand because uvicorn has no such option and a middleware only sees a
request once its headers are complete.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: Seconds a client has to send a request's line and headers (from connecting, or from
#: the end of the previous response on a kept-alive connection).
HEADER_TIMEOUT_S = 10.0
#: Seconds a request body may pause between two chunks before the connection is closed.
READ_TIMEOUT_S = 30.0
#: Seconds the whole request body has, from the end of its headers (32 MiB, the default
#: upload limit, at about 2 Mbit/s).
BODY_TIMEOUT_S = 120.0
#: Seconds an idle kept-alive connection stays open (uvicorn's own option, its default).
KEEP_ALIVE_S = 5.0


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a body read timeout (see the
    module docstring); the values are class attributes, set by :func:`timeout_protocol`."""

    header_timeout: float = HEADER_TIMEOUT_S
    read_timeout: float = READ_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S

    def connection_made(self, transport) -> None:
        self._deadline: asyncio.TimerHandle | None = None
        self._body_due: float | None = None  # loop time by which the current body must be complete
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._body_due is None:
                self._body_due = self.loop.time() + self.body_timeout
            # restarted by every chunk of the body, never past the whole body's deadline
            self._arm(max(0.0, min(self.read_timeout, self._body_due - self.loop.time())))
        elif state is not h11.IDLE:
            self._body_due = None
            self._disarm()  # request complete: the app's turn
        # IDLE: still in the headers; their deadline keeps running

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.header_timeout)  # the next request's headers

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        late = self._body_due is not None and self.loop.time() >= self._body_due
        if state is h11.SEND_BODY and self.flow.read_paused and not late:
            self._arm(self.read_timeout)  # we stopped reading, not the client
            return
        if state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            log.info(
                "closing a connection from %s: no complete request headers within %g s",
                self.client,
                self.header_timeout,
            )
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
        elif state is h11.SEND_BODY and late:
            log.info(
                "closing a connection from %s: the request body took over %g s",
                self.client,
                self.body_timeout,
            )
        elif state is h11.SEND_BODY:
            log.info(
                "closing a connection from %s: the request body paused for over %g s",
                self.client,
                self.read_timeout,
            )
        else:
            return
        self.transport.close()


def timeout_protocol(
    header_timeout: float = HEADER_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    body_timeout: float = BODY_TIMEOUT_S,
) -> type[TimeoutH11Protocol]:
    """A :class:`TimeoutH11Protocol` subclass with these deadlines (seconds, > 0)."""
    if not (header_timeout > 0 and read_timeout > 0 and body_timeout > 0):
        raise ValueError(
            f"timeouts must be positive seconds, got header_timeout="
            f"{header_timeout}, read_timeout={read_timeout}, "
            f"body_timeout={body_timeout}"
        )
    return type(
        "TimeoutH11Protocol",
        (TimeoutH11Protocol,),
        {
            "header_timeout": float(header_timeout),
            "read_timeout": float(read_timeout),
            "body_timeout": float(body_timeout),
        },
    )


def server_config(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    header_timeout: float = HEADER_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    body_timeout: float = BODY_TIMEOUT_S,
    **kwargs,
) -> uvicorn.Config:
    """The uvicorn configuration both servers use: h11 with the timeouts above."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=timeout_protocol(header_timeout, read_timeout, body_timeout),
        timeout_keep_alive=KEEP_ALIVE_S,  # type: ignore[arg-type]  # uvicorn takes float seconds too
        **kwargs,
    )


def run_server(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    header_timeout: float = HEADER_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    body_timeout: float = BODY_TIMEOUT_S,
) -> None:
    """Serve ``app`` until interrupted (Ctrl-C)."""
    uvicorn.Server(
        server_config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            header_timeout=header_timeout,
            read_timeout=read_timeout,
            body_timeout=body_timeout,
        )
    ).run()


@contextmanager
def background_server(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    timeout: float = 30.0,
    header_timeout: float = HEADER_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    body_timeout: float = BODY_TIMEOUT_S,
) -> Iterator[str]:
    """Serve ``app`` on a daemon thread; yields its base URL, stops it on exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        server_config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="off",
            header_timeout=header_timeout,
            read_timeout=read_timeout,
            body_timeout=body_timeout,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"cxrkit-serve-{port}"
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the service did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


__all__ = [
    "BODY_TIMEOUT_S",
    "HEADER_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "TimeoutH11Protocol",
    "background_server",
    "is_loopback",
    "run_server",
    "server_config",
    "timeout_protocol",
]
