"""Time for radcore: UTC epoch seconds as int, always passed in, never read ad hoc.

Domain functions take a `Clock` (any zero-argument callable returning int). Servers use
`system_clock`; tests use `FixedClock` in-process, or point `RADCORE_CLOCK_FILE` at a file holding an
epoch number to move time under a server running in another process.
"""

import os
import time
from typing import Callable

Clock = Callable[[], int]


def system_clock() -> int:
    return int(time.time())


class FixedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: int):
        self.now = int(now)

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += int(seconds)


class FileClock:
    """Reads the time from a file written by a test; falls back to the system clock if the file is empty.

    Only for end-to-end tests that drive a server in a subprocess; each call is one small read.
    """

    def __init__(self, path: str):
        self.path = path

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                text = f.read().strip()
            return int(text) if text else system_clock()
        except FileNotFoundError:
            return system_clock()


def default_clock() -> Clock:
    path = os.environ.get("RADCORE_CLOCK_FILE")
    return FileClock(path) if path else system_clock
