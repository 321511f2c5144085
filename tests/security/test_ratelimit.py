"""The fixed-window limiter behind the launch limit and the admin lockout, on an injected clock."""

from __future__ import annotations

from plugin.security.ratelimit import FixedWindow, client_key


class Seconds:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_limit_per_window_then_waits() -> None:
    clock = Seconds()
    limiter = FixedWindow(3, 60, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [0, 0, 0]
    clock.now += 10
    assert limiter.hit("a") == 50  # seconds to the window's end
    assert limiter.retry_after("a") == 50
    assert limiter.hit("b") == 0  # another key counts on its own
    clock.now += 50
    assert limiter.retry_after("a") == 0
    assert limiter.hit("a") == 0


def test_a_lock_outlasts_the_window() -> None:
    clock = Seconds()
    limiter = FixedWindow(1, 10, lock_s=300, clock=clock)
    assert limiter.hit("a") == 0
    assert limiter.hit("a") == 300
    clock.now += 20  # the window is over, the lock is not
    assert limiter.hit("a") == 280
    clock.now += 281
    assert limiter.hit("a") == 0


def test_reset_forgets_a_key() -> None:
    limiter = FixedWindow(1, 60, clock=Seconds())
    limiter.hit("a")
    assert limiter.retry_after("a") == 60
    limiter.reset("a")
    assert limiter.retry_after("a") == 0


def test_the_table_of_keys_is_bounded() -> None:
    limiter = FixedWindow(1, 60, clock=Seconds(), max_keys=100)
    for n in range(10_000):
        limiter.hit(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._windows) == 100


def test_ipv6_clients_are_counted_by_their_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("2001:db8::1") == client_key("2001:db8::2")
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key(None) == "unknown"
