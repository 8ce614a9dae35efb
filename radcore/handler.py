"""The prepaid request handler: one LMDB write transaction per batch, one durable commit for all.

This is what makes accounting both durable and fast (DESIGN.md, "Speed design"): the server hands
over every request it drained in one wakeup, they are decided in order inside one transaction (so
two requests for the same card in one batch see each other's holds), the transaction commits once
(one fsync for the batch: group commit), and only then are replies released. A failed commit
yields no Accounting-Response at all, so the NAS retransmits and nothing acknowledged is lost.

A request whose processing raises is a bug, not a decision: its half-done writes must not reach
the disk, so the transaction is abandoned and the batch re-run without it (it gets no reply).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import lmdb

from . import dictionary as d
from . import replies
from .clock import Clock, default_clock
from .keys import KeyRing
from .prepaid import CardAuthenticator, Decision, Lookups
from .settlement import Settlement
from .errors import StoreError
from .store import Store

if TYPE_CHECKING:
    from .config import Client, Config
    from .packet import Request

log = logging.getLogger(__name__)

Reply = tuple[int, list[tuple[int, bytes]]] | None
Item = tuple["Request", "Client", tuple[str, int]]


class PrepaidHandler:
    """Implements the server's `Handler` seam over the LMDB store."""

    def __init__(self, config: Config, *, clock: Clock | None = None, store: Store | None = None,
                 keyring: KeyRing | None = None):
        self.config = config
        self.clock = clock or default_clock()
        self.store = store or Store(config.server.data_dir, map_size=config.server.map_size_mb << 20)
        self.keyring = keyring or KeyRing.load_or_create(config.control.key_file)
        self.lookups = Lookups(self.store)
        self.auth = CardAuthenticator(self.store, self.keyring, config.prepaid, self.lookups)
        self.settlement = Settlement(self.store, self.keyring, config.prepaid, self.lookups)
        self.failed_commits = 0
        self.poisoned = 0
        self._next_sweep = 0

    def handle(self, batch: list[Item]) -> list[Reply]:
        now = self.clock()
        skip: set[int] = set()
        while True:
            try:
                return self._run(batch, now, skip)
            except _Poisoned as exc:
                log.exception("request %d of the batch failed; it gets no reply", exc.index,
                              exc_info=exc.__cause__)
                self.poisoned += 1
                skip.add(exc.index)
            except (lmdb.Error, StoreError):
                self.failed_commits += 1
                log.exception("store write failed: %d requests left unanswered so the NAS retries",
                              len(batch))
                return [self._unwritable(req, client) for req, client, _ in batch]

    def _run(self, batch: list[Item], now: int, skip: set[int]) -> list[Reply]:
        out: list[Reply] = []
        with self.store.begin(write=True) as txn:
            self.lookups.refresh(txn)
            for i, (req, client, source) in enumerate(batch):
                if i in skip:
                    out.append(None)
                    continue
                try:
                    out.append(self._one(txn, req, client, source[0], now))
                except (lmdb.Error, StoreError):
                    raise
                except Exception as exc:
                    raise _Poisoned(i) from exc
        return out

    def _one(self, txn, req: Request, client: Client, source_ip: str, now: int) -> Reply:
        if req.code == d.Code.ACCESS_REQUEST:
            return self._access_reply(self.auth.authorize(txn, req, client, source_ip, now), client)
        self.settlement.account(txn, req, client, source_ip, now)
        return d.Code.ACCOUNTING_RESPONSE, []

    @staticmethod
    def _access_reply(decision: Decision, client: Client) -> Reply:
        profile = client.profile
        if not decision.accepted:
            return d.Code.ACCESS_REJECT, replies.reject(profile, decision.outcome, decision.message)
        return d.Code.ACCESS_ACCEPT, replies.accept(
            profile, available=decision.available, currency=decision.currency,
            credit_time=decision.credit_time, language=decision.language, route=decision.route)

    @staticmethod
    def _unwritable(req: Request, client: Client) -> Reply:
        """When the store cannot write, accounting goes unanswered and calls are not authorized."""
        if req.code != d.Code.ACCESS_REQUEST:
            return None
        return d.Code.ACCESS_REJECT, replies.reject(
            client.profile, d.ReturnCode.SERVICE_UNAVAILABLE, "service temporarily unavailable")

    def tick(self, now: float | None = None) -> None:
        """Release reservations past their deadline, at most every `sweep_interval_seconds`."""
        wall = time.monotonic()
        if wall < self._next_sweep:
            return
        self._next_sweep = wall + self.config.prepaid.sweep_interval_seconds
        try:
            with self.store.begin(write=True) as txn:
                swept = self.settlement.sweep(txn, self.clock())
            if swept:
                log.info("sweeper closed %d expired sessions", swept)
        except (lmdb.Error, StoreError):
            log.exception("sweeper could not write")

    def close(self) -> None:
        self.store.close()


class _Poisoned(Exception):
    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def make_handler(config: Config) -> PrepaidHandler:
    """The server's handler factory: called in each worker after fork, so LMDB opens there."""
    return PrepaidHandler(config)
