"""RFC 5080 §2.2.2 duplicate detection: answer a retransmission from cache, never process it twice.

A NAS that misses our reply sends the *same* packet again: same source address and port, same
Identifier, same Request Authenticator. Processing it again would be wrong twice over (a second
reservation, a second debit) and slow, so the reply bytes we sent are kept for
`duplicate_cache_seconds` and sent again as they are. A packet with a new Request Authenticator
under the same key is a new request (the NAS gave up on the old one and reused the Identifier),
and its reply replaces the entry.

The key carries the code class (auth or acct) because the auth and acct Identifier spaces are
independent on the NAS. Status-Server never enters the cache: it is side-effect free and cheap.

The cache lives in one worker process. That is correct only because the kernel's SO_REUSEPORT
hash sends every packet of one NAS 4-tuple to the same socket, hence the same worker (see
`radcore.server`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

#: Code classes in the key.
AUTH = 0
ACCT = 1

Key = tuple[str, int, int, int]  # (source ip, source port, identifier, code class)


class DuplicateCache:
    """Bounded map key → (Request Authenticator, reply bytes, expiry), oldest first.

    Entries are kept in insertion order and the lifetime is the same for all, so the oldest entry
    is also the first to expire: expiry and eviction both pop from the front, O(1) per entry.
    `clock` returns seconds (monotonic by default; tests inject a fake one). `seconds = 0`
    disables the cache: nothing is stored and every lookup misses.
    """

    __slots__ = ("seconds", "max_entries", "clock", "_entries")

    def __init__(self, seconds: float, max_entries: int = 65536,
                 clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[Hashable, tuple[bytes, bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Hashable, authenticator: bytes) -> bytes | None:
        """The cached reply if this is an identical retransmission within the window, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        cached_auth, reply, expires = entry
        if expires <= self.clock():
            del self._entries[key]
            return None
        return reply if cached_auth == authenticator else None

    def store(self, key: Hashable, authenticator: bytes, reply: bytes) -> None:
        """Remember the reply sent for (key, authenticator), replacing any older request's entry."""
        if self.seconds <= 0:
            return
        now = self.clock()
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (authenticator, reply, now + self.seconds)
        self._trim(now)

    def discard(self, key: Hashable) -> None:
        """Forget a key: its newest request got no reply, so a retransmission must be processed
        again (e.g. after a failed durable commit), not answered with an older request's reply."""
        self._entries.pop(key, None)

    def expire(self) -> int:
        """Drop expired entries now (the worker calls this from its idle tick); returns how many."""
        before = len(self._entries)
        self._trim(self.clock())
        return before - len(self._entries)

    def _trim(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (_, _, expires) = next(iter(entries.items()))
            if expires > now and len(entries) <= self.max_entries:
                break
            del entries[key]


class BatchDeduper:
    """Identical copies of one request inside a single batch: process the first, answer all.

    A NAS with a short timeout can retransmit before the first copy has been handled; both land
    in the same batch and the cache cannot help yet. `leader` returns the batch position of an
    earlier identical copy (same key and authenticator) or registers this one as the leader.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[Hashable, tuple[bytes, int]] = {}

    def leader(self, key: Hashable, authenticator: bytes, position: int) -> int | None:
        seen = self._seen.get(key)
        if seen is not None and seen[0] == authenticator:
            return seen[1]
        self._seen[key] = (authenticator, position)
        return None
