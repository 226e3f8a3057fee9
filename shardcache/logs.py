"""One clear line per event, not one per call: `RateLimited` logs an event at most once per
period per subject (a shard, a slot), and says how many it held back meanwhile."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["RateLimited"]


class RateLimited:
    """``warning(subject, message, *args)`` on ``logger``, at most once per ``every``
    seconds for each ``subject``."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, subject: str, message: str, *args: Any) -> bool:
        """Log it (True), or count it as held back (False)."""
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(subject, 0.0):
                self._held[subject] = self._held.get(subject, 0) + 1
                return False
            self._next[subject] = now + self.every
            held = self._held.pop(subject, 0)
        if held:
            message += " (and %d more like it in the last %gs)"
            args = (*args, held, self.every)
        self.logger.warning(message, *args)
        return True
