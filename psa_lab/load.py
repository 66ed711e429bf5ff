"""A steady, bounded load on the lab's gateway, counting failed requests.

Used by the deploy tests and benchmarks: a few threads send GET requests
round-robin to each service's health through the gateway at a steady rate
(``rate`` requests per second in all; 0 for as fast as they can), one new
connection per request (as browsers and load balancers open many), and count
as failed every answer that is not 200 and every request that errs or has no
answer within ``timeout`` (10 s, as autocannon and most HTTP clients). It only
talks to the address it is given (a lab container) and stops by itself after
``max_seconds`` or ``max_requests``.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """What the load saw."""

    requests: int = 0
    failed: int = 0
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class Load:
    """Run a load in background threads between ``start()`` and ``stop()``."""

    def __init__(
        self,
        host: str,
        port: int,
        paths: list[str],
        threads: int = 4,
        rate: float = 0.0,
        max_seconds: float = 600.0,
        max_requests: int = 500_000,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.paths = host, port, paths
        self.threads = threads
        self.rate = rate
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.timeout = timeout
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._started = 0.0

    def start(self) -> Load:
        self._started = time.monotonic()
        for number in range(self.threads):
            worker = threading.Thread(target=self._work, args=(number,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        self.result.seconds = time.monotonic() - self._started
        return self.result

    def _work(self, number: int) -> None:
        index = number
        deadline = self._started + self.max_seconds
        interval = self.threads / self.rate if self.rate else 0.0
        due = time.monotonic() + interval * number / self.threads
        while not self._stop.is_set() and time.monotonic() < deadline:
            if interval:
                # A fixed schedule: a slow answer does not lower the rate.
                self._stop.wait(max(due - time.monotonic(), 0))
                due += interval
            path = self.paths[index % len(self.paths)]
            index += 1
            outcome, body = self._one(path)
            with self._lock:
                self.result.requests += 1
                self.result.statuses[outcome] += 1
                if outcome != "200":
                    self.result.failed += 1
                    if len(self.result.errors) < 20:
                        self.result.errors.append(f"{path}: {outcome} {body[:300]}")
                if self.result.requests >= self.max_requests:
                    self._stop.set()

    def _one(self, path: str) -> tuple[str, str]:
        """One request: its status (or error name) and the start of its body."""
        connection = http.client.HTTPConnection(
            self.host, self.port, timeout=self.timeout
        )
        try:
            connection.request("GET", path, headers={"Connection": "close"})
            response = connection.getresponse()
            body = response.read(2048).decode(errors="replace")
            return str(response.status), body
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__, ""
        finally:
            connection.close()
