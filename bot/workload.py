"""A bound on photos that wait for or are in model work at once, over all users."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)


class BusyError(Exception):
    """Every slot is taken, so the request gets a polite "busy" reply."""


class WorkloadLimit:
    """Count photo requests in flight and reject new ones beyond ``max_pending``.

    A slot is taken before the photo is downloaded and released when the reply is ready, so
    the bound also limits memory held by downloaded photos. Not thread-safe: use it on the
    event loop only.
    """

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self._pending = 0

    @property
    def pending(self) -> int:
        """Requests holding a slot now."""
        return self._pending

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of the ``with`` block.

        Raises:
            BusyError: all ``max_pending`` slots are taken.
        """
        if self._pending >= self.max_pending:
            logger.warning("busy: %d photo requests in flight, the maximum", self._pending)
            raise BusyError(f"{self._pending} photo requests are in flight, the maximum is {self.max_pending}")
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1
