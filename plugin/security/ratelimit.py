"""Small in-process limits for unauthenticated endpoints: a fixed-window counter per key.

Per process: each gunicorn worker (and each instance) counts on its own, so the limit an
attacker meets is the configured one times the number of worker processes. That is enough
for what these limits are for (stop thousands of launches or password guesses a second
from one address); the figures in the settings are per worker process. The table of keys is
bounded, so many addresses cannot grow memory without limit. Time comes from an injected
clock (seconds, monotonic in production).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cds_hooks.errors import CdsError

Seconds = Callable[[], float]
MAX_KEYS = 10_000
OVERALL = "*"


class TooManyRequests(CdsError):
    status = 429
    code = "too-many-requests"
    default_message = "Too many requests; try again later."

    def __init__(self, retry_after: int, message: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def client_key(address: str | None) -> str:
    """The key of a client address: IPv6 addresses by their /64, as one host holds a /64."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6 and not parsed.is_loopback:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


@dataclass(slots=True)
class _Window:
    start: float
    count: int
    locked_until: float = 0.0


class FixedWindow:
    """At most ``limit`` events per key in each window of ``window_s`` seconds.

    ``lock_s``: a key that passes the limit stays refused for that long (a lockout).
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        lock_s: float = 0.0,
        clock: Seconds = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.lock_s = lock_s
        self.clock = clock
        self.max_keys = max_keys
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` may try again; 0 when it may now."""
        with self._lock:
            now = self.clock()
            window = self._windows.get(key)
            if window is None:
                return 0
            if window.locked_until > now:
                return max(1, math.ceil(window.locked_until - now))
            if now - window.start < self.window_s and window.count >= self.limit:
                return max(1, math.ceil(window.start + self.window_s - now))
            return 0

    def hit(self, key: str) -> int:
        """Count one event; returns 0 when it is within the limit, else the seconds to wait."""
        with self._lock:
            now = self.clock()
            window = self._windows.get(key)
            if window is not None and window.locked_until > now:
                return max(1, math.ceil(window.locked_until - now))
            if window is None or now - window.start >= self.window_s:
                window = _Window(start=now, count=0)
                self._windows[key] = window
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
            window.count += 1
            if window.count <= self.limit:
                return 0
            if self.lock_s:
                window.locked_until = now + self.lock_s
                return max(1, math.ceil(self.lock_s))
            return max(1, math.ceil(window.start + self.window_s - now))

    def reset(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)
