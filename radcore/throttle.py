"""A throttle on PIN guessing where the card lockout cannot help: PIN-only dialing.

With card number + PIN, a wrong PIN is counted on the card and the card locks (prepaid
`register_failed_pin`). With PIN-only dialing a wrong guess names no card, so nothing locks; the
only brake is on the line the guesses come from. `PinThrottle` is a token bucket per (NAS,
Calling-Station-Id): every *unknown* PIN costs one token, tokens come back at `per_minute` per
minute up to a burst of `per_minute`, and a line with no token left is rejected before its PIN is
looked up. Known PINs cost nothing, so a busy gateway full of honest callers is never slowed.

Trade-offs, stated so nobody relies on more than this gives:

- The key trusts Calling-Station-Id, which many gateways pass through from the caller. An attacker
  who can set it freely gets a fresh bucket per value; the per-line limit then only bounds one line.
  (`radcore.attack_model` states the success rate with that in mind.) An absent Calling-Station-Id
  keys the NAS alone, so every anonymous caller of a gateway shares one bucket.
- State is in the worker's memory, one bucket per line *that failed recently*: a bucket that has
  refilled is the same as none and is dropped, and at most `max_lines` are kept (the least recently
  failing line is forgotten first), so a flood of made-up Calling-Station-Ids cannot grow memory
  without bound. Forgetting a line only ever gives it a full bucket back, never fewer tokens.
- Each worker process has its own throttle and a NAS's traffic always reaches the same worker
  (SO_REUSEPORT hashes the source 4-tuple), so the limit holds per NAS source port.
- Time is the handler's clock (epoch seconds), so tests move it with the clock, not with sleeps.
  A batch re-run after a failed commit may charge a line twice; that errs towards throttling.

The counts are also the workers' `/metrics` (`radcore_pin_only_*_total`, `attach_metrics`), so an
operator sees a guessing run as it happens rather than in a log line a minute.

`per_minute = 0` turns the throttle off.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from .metrics import RateLimitedLog, Recorder

log = logging.getLogger(__name__)

Line = tuple[str, str]

DEFAULT_MAX_LINES = 65_536


class PinThrottle:
    """Token buckets for unknown PINs, keyed by (NAS identity, Calling-Station-Id)."""

    __slots__ = ("_buckets", "_log", "charged", "evicted", "max_lines", "metrics", "per_minute", "throttled")

    def __init__(self, per_minute: int, max_lines: int = DEFAULT_MAX_LINES):
        if per_minute < 0 or max_lines < 1:
            raise ValueError("per_minute must be >= 0 and max_lines >= 1")
        self.per_minute = per_minute
        self.max_lines = max_lines
        # line -> (tokens left, epoch second they were counted at); oldest failure first.
        self._buckets: OrderedDict[Line, tuple[float, int]] = OrderedDict()
        self.throttled = 0   # requests rejected unlooked-up because their line had no token
        self.charged = 0     # unknown PINs counted
        self.evicted = 0     # lines forgotten to stay within max_lines
        self._log = RateLimitedLog(log, 60.0)
        self.metrics: Recorder | None = None  # the worker's, once attached

    def attach_metrics(self, recorder: Recorder) -> None:
        """Count into the worker's /metrics row from now on, as well as into the attributes."""
        self.metrics = recorder

    def _count(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.add(name)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, line: Line, now: int) -> float:
        """Tokens the line has at `now`; drops a bucket that has refilled completely."""
        entry = self._buckets.get(line)
        if entry is None:
            return float(self.per_minute)
        tokens, then = entry
        tokens = min(float(self.per_minute), tokens + max(0, now - then) * self.per_minute / 60.0)
        if tokens >= self.per_minute:
            del self._buckets[line]
        return tokens

    def allow(self, line: Line, now: int) -> bool:
        """May this line's PIN be looked up? False means: reject it unseen (and it is counted)."""
        if not self.per_minute or self._tokens(line, now) >= 1.0:
            return True
        self.throttled += 1
        self._count("pin_only_throttled")
        return False

    def charge(self, line: Line, now: int) -> None:
        """One unknown PIN from `line`."""
        if not self.per_minute:
            return
        tokens = self._tokens(line, now) - 1.0
        self._buckets[line] = (tokens, now)
        self._buckets.move_to_end(line)
        self.charged += 1
        self._count("pin_only_unknown")
        if tokens < 1.0:
            self._log(logging.WARNING, "pin_throttle", "PIN-only guessing throttled for NAS %r, "
                      "Calling-Station-Id %r: %d unknown PINs a minute allowed",
                      line[0], line[1], self.per_minute)
        while len(self._buckets) > self.max_lines:
            self._buckets.popitem(last=False)
            self.evicted += 1
            self._count("pin_only_lines_forgotten")
