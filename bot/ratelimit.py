"""Per-user rate limit on photo requests (identify and enroll), as a sliding window."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Users tracked before the limiter drops those with no request left in the window.
_PRUNE_AT_USERS = 10_000


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may run.

    Attributes:
        retry_after_s: seconds until the user may send again; 0 when allowed.
        first_rejection: True for the first rejected request since the user's last allowed
            one, so the bot explains the limit once instead of replying to every extra photo.
    """

    allowed: bool
    retry_after_s: float = 0.0
    first_rejection: bool = False


class RateLimiter:
    """Allow at most ``limit`` requests per user in any ``window_s`` seconds.

    Rejected requests do not count against the limit. Not thread-safe: call it from the event loop only.

    Args:
        clock: monotonic time source in seconds, replaceable in tests.
    """

    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._times: dict[int, deque[float]] = {}
        self._rejected: set[int] = set()

    def check(self, user_id: int) -> RateDecision:
        """Record a request of ``user_id`` if it is allowed, and return whether it is."""
        now = self._clock()
        times = self._times.setdefault(user_id, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()

        if len(times) < self.limit:
            times.append(now)
            self._rejected.discard(user_id)
            self._prune(now)
            return RateDecision(allowed=True)

        first = user_id not in self._rejected
        self._rejected.add(user_id)
        retry_after = times[0] + self.window_s - now
        logger.info("user %d is over the rate limit of %d per %g s", user_id, self.limit, self.window_s)
        return RateDecision(allowed=False, retry_after_s=retry_after, first_rejection=first)

    def _prune(self, now: float) -> None:
        if len(self._times) < _PRUNE_AT_USERS:
            return
        idle = [user for user, times in self._times.items() if not times or times[-1] <= now - self.window_s]
        for user in idle:
            del self._times[user]
            self._rejected.discard(user)
