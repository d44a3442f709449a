"""A switchable TCP proxy for outage tests: Baton's processes reach PostgreSQL or
Redis through it, and the test cuts the line and restores it on demand.

    with SwitchableProxy(5432) as proxy:        # listens on 127.0.0.1:<proxy.port>
        proxy.down()     # every open connection is reset, every new one is reset at once
        proxy.up()       # new connections reach the server again

`down()` is what a server restart looks like from the client's side: established
connections die (RST) and, until the server is back, connecting fails.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dying server's kernel would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)     # wakes a relay thread blocked reading it
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class SwitchableProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._open = True
        self._stopping = False
        self.accepted = 0
        self.refused = 0
        self.changed_at = time.monotonic()
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{target_port}", daemon=True)
        self._thread.start()

    # -- switching ------------------------------------------------------------------
    @property
    def is_up(self) -> bool:
        return self._open

    def down(self) -> float:
        """Reset every connection and refuse new ones; returns the moment (monotonic)."""
        with self._lock:
            self._open = False
            pairs, self._pairs = self._pairs, set()
            self.changed_at = time.monotonic()
        for client, server in pairs:
            _reset(client)
            _reset(server)
        return self.changed_at

    def up(self) -> float:
        """Let connections through again; returns the moment (monotonic)."""
        with self._lock:
            self._open = True
            self.changed_at = time.monotonic()
        return self.changed_at

    def close(self) -> None:
        self._stopping = True
        self.down()
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> "SwitchableProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- relaying -------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            client.settimeout(None)
            if not self._open:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if not self._open:          # cut while we were connecting
                    _reset(client)
                    _reset(server)
                    continue
                pair = (client, server)
                self._pairs.add(pair)
                self.accepted += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(pair, source, sink), daemon=True,
                                 name="proxy-relay").start()

    def _relay(self, pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        # One side hung up (or was cut): end both, the way a relay would.
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
