"""Warnings about what senders put in their data (an unknown model, an unusable attribute, a label
past its cap), bounded whatever the senders do: each subject is warned about once, at most `burst`
warnings per `period_seconds` are written, and every value is clipped to a few hundred characters."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Hashable

MAX_VALUE_CHARS = 200
WARNING_BURST = 10
WARNING_PERIOD_SECONDS = 60.0
REMEMBERED_SUBJECTS = 10_000


def clip(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """`value` as text, cut to `limit` characters with a marker saying how long it was."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text)} chars]"


class BoundedLog:
    """One kind of warning: once per subject (among the last `remember` subjects), at most `burst`
    per `period_seconds`; what is left out is counted and reported with the next warning written.

    Arguments other than numbers are turned into text only when written, and clipped."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = WARNING_BURST,
        period_seconds: float = WARNING_PERIOD_SECONDS,
        remember: int = REMEMBERED_SUBJECTS,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._period = period_seconds
        self._remember = remember
        # Hashes, not the subjects: a subject may be a megabyte of hostile text.
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._window_start = -period_seconds
        self._written = 0
        self._left_out = 0

    def warning(self, subject: Hashable, message: str, *args: object) -> None:
        key = hash(subject)
        if key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        now = time.monotonic()
        if now - self._window_start >= self._period:
            if self._left_out:
                self._logger.warning(
                    "%d more warnings like these were left out in the last %g s", self._left_out, self._period
                )
            self._window_start, self._written, self._left_out = now, 0, 0
        if self._written >= self._burst:
            self._left_out += 1
            return
        self._written += 1
        self._logger.warning(message, *(arg if isinstance(arg, (int, float)) else clip(arg) for arg in args))
