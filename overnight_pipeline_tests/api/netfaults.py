"""Network faults for the Redis-failure tests: a closed port, a server that never answers,
and a proxy in front of the real Redis that can stop forwarding mid-test."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class _Server:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        """Hold the connection open and never answer."""

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        for c in [*self.conns, self.sock]:
            with contextlib.suppress(OSError):
                c.close()


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts connections and then says nothing at all."""
    server = _Server()
    try:
        yield server.port
    finally:
        server.close()


class FreezableProxy(_Server):
    """Forwards to `upstream` until `freeze()`; after that, requests vanish unanswered."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.frozen = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        up = socket.create_connection(self.upstream)
        self.conns.append(up)
        for src, dst in ((conn, up), (up, conn)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65_536):
                if not self.frozen.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()


@contextlib.contextmanager
def freezable_proxy(upstream: tuple[str, int] = ("127.0.0.1", 6379)) -> Iterator[FreezableProxy]:
    proxy = FreezableProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
