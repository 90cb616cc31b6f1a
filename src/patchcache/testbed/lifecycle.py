"""What every long-lived part of the testbed shares: ``with`` starts it and stops it again.

Origin, CountingRelay, SquidInstance, Stack, Tree and Farm each have ``start()`` (returning the
started object) and ``stop()`` (safe to call on a part that never started, or failed half way);
`StartStop` turns those into the context-manager protocol once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartStop:
    """A base class: subclasses define ``start`` and ``stop``; ``with`` calls them."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
