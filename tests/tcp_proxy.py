"""A TCP proxy that a test can cut and restore, to make a real network outage (after psycopg's
tests/fix_proxy.py): while cut, every open connection through it is closed and new ones are
refused; restored, it forwards again. It can also delay the server's replies while the client's
statements reach the server at once (a partition in one direction, as when the replies' packets
are lost and only retransmitted once the route is back)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut = threading.Event()
        self.reply_delay = 0.0  # seconds each reply waits before it is passed on
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()
        self.accepted = 0

    def cut(self) -> None:
        """Close every connection through the proxy and refuse new ones until restore()."""
        self._cut.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self._cut.clear()

    def delay_replies(self, seconds: float) -> None:
        """From now on, pass on what the server sends ``seconds`` after it arrived; what the
        clients send still goes through at once."""
        self.reply_delay = seconds

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()  # refused while the network is down
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        replies: deque[tuple[float, bytes]] = deque()  # (when to pass it on, data), in order
        server_open = True
        try:
            while server_open or replies:  # what the server sent before it closed still goes
                sources = [client, server] if server_open else [client]
                readable, _, _ = select.select(sources, [], [], 0.01)
                for source in readable:
                    data = source.recv(65536)
                    if source is client:
                        if not data:
                            return
                        server.sendall(data)
                    elif data:
                        replies.append((time.monotonic() + self.reply_delay, data))
                    else:
                        server_open = False
                while replies and replies[0][0] <= time.monotonic():
                    client.sendall(replies.popleft()[1])
        except (OSError, ValueError):
            return
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()


@contextlib.contextmanager
def proxy_to(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()
