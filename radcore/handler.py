"""The prepaid request handler: reads without the writer lock, writes in one durable commit per batch.

A batch is decided in two passes (DESIGN.md, "Speed design"):

1. A read transaction answers every Access-Request whose decision changes nothing: a plain card
   authentication of an activated card, an unknown card, a locked card. No writer lock is taken and
   nothing is fsync'd, so the workers answer these in parallel at CPU speed.
2. Everything else (accounting, number authorizations, activations, failed PINs) is decided in order
   inside one write transaction (so two requests for the same card see each other's holds), which
   commits once: one fsync for the batch, group commit. Only then are replies released.

A request whose processing raises is a bug, not a decision: its half-done writes must not reach
the disk, so the write transaction is abandoned and re-run without it (it gets no reply).

When the store cannot write (LMDB map full, disk full, I/O error) the write pass is lost as a
whole, and the handler degrades rather than going dark: accounting gets `NoReply("commit_failed")`
(counted by the server), so the NAS keeps the record and retransmits it; the Access-Requests that
needed a write get the profile's service_unavailable code, because a call we could not reserve money
for could never be billed; the read-only answers of pass 1 stand. The error is logged (rate-limited)
with the store's own explanation, e.g. for a full map "raise map_size (server.map_size_mb ...) and
restart every process"; once that is done the NASes' retransmissions are settled as usual.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import lmdb

from . import dictionary as d
from . import fastpath
from . import replies
from .clock import Clock, default_clock
from .errors import StoreError
from .keys import KeyRing
from .metrics import RateLimitedLog
from .prepaid import CardAuthenticator, Decision, Lookups, NeedsWrite
from .server import NoReply
from .settlement import Settlement
from .store import Store

if TYPE_CHECKING:
    from .config import Client, Config
    from .metrics import Recorder
    from .packet import Request

log = logging.getLogger(__name__)

Reply = tuple[int, list[tuple[int, bytes]]] | NoReply | None
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
        #: The C lanes of the worker's loop, both None where the extensions are not built:
        #: `fast_answer` answers plain card authentications from a read transaction
        #: (`radcore._cardauth`); `fast_write` settles ordinary accounting and reserves ordinary
        #: number authorizations in its own durable commit per batch (`radcore._acctlane`).
        self.fast_answer, self.fast_write = _c_lanes(self.store, self.keyring, self.lookups,
                                                     self.settlement, self.clock)
        self.failed_commits = 0
        self.poisoned = 0
        self._next_sweep = 0
        self._ratelog = RateLimitedLog(log)

    def attach_metrics(self, recorder: Recorder) -> None:
        """Count the handler's own events (PIN-only throttling) in the worker's /metrics row."""
        self.auth.throttle.attach_metrics(recorder)

    def handle(self, batch: list[Item]) -> list[Reply]:
        now = self.clock()
        out: list[Reply] = [None] * len(batch)
        pending = self._read_pass(batch, now, out)
        skip: set[int] = set()
        while pending:
            try:
                self._write_pass(batch, pending, now, skip, out)
                break
            except _Poisoned as exc:
                log.exception("request %d of the batch failed; it gets no reply", exc.index,
                              exc_info=exc.__cause__)
                self.poisoned += 1
                skip.add(exc.index)
            except (lmdb.Error, StoreError) as exc:
                self.failed_commits += 1
                error = self.store.error(exc) if isinstance(exc, lmdb.Error) else exc
                self._ratelog(logging.ERROR, "commit", "store write failed, batch not committed: %s; "
                              "%d requests left unanswered or refused (the NAS retransmits)",
                              error, len(pending))
                for i in pending:
                    out[i] = self._unwritable(*batch[i][:2])
                break
        return out

    def _read_pass(self, batch: list[Item], now: int, out: list[Reply]) -> list[int]:
        """Answer what needs no write; return the indexes left for the write pass."""
        pending: list[int] = []
        with self.store.begin() as txn:
            self.lookups.refresh(txn)
            for i, (req, client, source) in enumerate(batch):
                # Accounting always writes; so does a number authorization of a card that may call
                # (its reservation), so deciding it here would only be done twice.
                if req.code != d.Code.ACCESS_REQUEST or self.auth.dialed(req, client):
                    pending.append(i)
                    continue
                try:
                    decision = self.auth.authorize(txn, req, client, source[0], now, writable=False)
                except NeedsWrite:
                    pending.append(i)
                    continue
                except (lmdb.Error, StoreError):
                    raise
                except Exception:
                    log.exception("request %d of the batch failed; it gets no reply", i)
                    self.poisoned += 1
                    continue
                out[i] = self._access_reply(decision, client)
        return pending

    def _write_pass(self, batch: list[Item], pending: list[int], now: int, skip: set[int],
                    out: list[Reply]) -> None:
        decided: list[tuple[int, Reply]] = []
        with self.store.begin(write=True) as txn:
            self.lookups.refresh(txn)
            for i in pending:
                if i in skip:
                    continue
                req, client, source = batch[i]
                try:
                    decided.append((i, self._one(txn, req, client, source[0], now)))
                except (lmdb.Error, StoreError):
                    raise
                except Exception as exc:
                    raise _Poisoned(i) from exc
        for i, reply in decided:  # only once the commit is durable
            out[i] = reply

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
        if req.code != d.Code.ACCESS_REQUEST:
            return _COMMIT_FAILED
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


_COMMIT_FAILED = NoReply("commit_failed")


class _Poisoned(Exception):
    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def _c_lanes(store: Store, keyring: KeyRing, lookups: Lookups, settlement: Settlement, clock: Clock):
    if fastpath.load_lane() is None:
        return None, None
    from ._acctlane import WriteLane
    from ._cardauth import CardAuthLane

    read, write = CardAuthLane(store, keyring, lookups, clock), WriteLane(store, settlement, lookups, clock)
    read.read_through(write.held)  # see the debits a journaled batch made before they are committed
    return read, write


def make_handler(config: Config) -> PrepaidHandler:
    """The server's handler factory: called in each worker after fork, so LMDB opens there."""
    return PrepaidHandler(config)
