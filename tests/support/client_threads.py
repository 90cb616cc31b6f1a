"""Several clients at once, each in its own thread, every failure reported to the test."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_in_threads(client: Callable[[int], None], count: int, *, timeout: float = 60.0) -> None:
    """Run ``client(0)`` ... ``client(count - 1)`` in parallel threads and wait for them (each
    join bounded by ``timeout``); fail if one is still running or any raised."""
    errors: list[BaseException] = []

    def guarded(number: int) -> None:
        try:
            client(number)
        except BaseException as exc:  # an assert in a thread would otherwise only be printed
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), f"a client is still running after {timeout} s"
    assert not errors, errors
