"""A locustfile whose users each keep one TCP connection to the target open and send one HTTP/1.1
keep-alive request over it every HOLD_WAIT seconds (default 10): the connection is the user's for the whole
run, so a Locust run of N users holds N connections. Each request is reported to Locust's statistics
(request type "GET", name "keep-alive /"), a user's first connect as "CONNECT". Run by tests/test_exec.py
and benchmarks/clients.py; the README's recipe is the same.

    locust -f locust_hold.py --master --headless -u 68000 -r 4000 --host http://10.0.0.5:8080 ...
    multiip exec --all -- locust -f locust_hold.py --worker --master-host 10.0.0.2
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from locust import User, constant, task


class KeepAlive(User):
    wait_time = constant(float(os.environ.get("HOLD_WAIT", "10")))

    def on_start(self) -> None:
        url = urlsplit(self.host or "http://127.0.0.1:8080")
        self.target = (url.hostname or "127.0.0.1", url.port or 80)
        self.request = f"GET / HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode()
        self.sock: socket.socket | None = None
        self._timed("CONNECT", "connect", self._connect)

    def on_stop(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def _connect(self) -> int:
        self.sock = socket.create_connection(self.target, timeout=30)
        return 0

    def _get(self) -> int:
        if self.sock is None:
            self._connect()
        assert self.sock is not None
        self.sock.sendall(self.request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            head += chunk
        headers, _, body = head.partition(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            body += chunk
        return len(body)

    def _timed(self, kind: str, name: str, call: Callable[[], int]) -> None:
        t0 = time.perf_counter()
        size, error = 0, None
        try:
            size = call()
        except OSError as e:
            error = e
            if self.sock is not None:
                self.sock.close()
            self.sock = None
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - t0) * 1000,
            response_length=size,
            exception=error,
            context={},
        )

    @task
    def get(self) -> None:
        self._timed("GET", "keep-alive /", self._get)
