"""LMDB environment, named databases, transactions and the record access helpers.

Everything radcore persists lives in one LMDB environment. The byte layouts of its records and keys
are in `radcore.records`, re-exported here so that callers import persistence from one module.
"""

from __future__ import annotations

import heapq
import os
import struct
from contextlib import contextmanager
from typing import Any, Iterator

import lmdb

from radcore import journal
from radcore.errors import StoreError
from radcore.records import (  # noqa: F401  (re-exported: callers import persistence from here)
    MAX_SERIES, MAX_SERIAL, MAX_KEY_SIZE, MAX_SESSION_KEY_SIZE, series_key, card_key, split_card_key, format_card_number,
    parse_card_number, name_key, session_key, cdr_key, CardStatus, SeriesStatus, SessionState,
    CARD_FORMAT, CARD_FIXED_SIZE, CARD_OFFSETS, Card, SESSION_FORMAT, Session, SESSION_FIXED_SIZE,
    CDR_FORMAT, Cdr, Series, RateTable, TaxProfile, RoutingPlan, Reseller,
)

SCHEMA_VERSION = 1
DEFAULT_MAP_SIZE = 8 << 30
DB_NAMES = ("series", "cards", "pins", "sessions", "cdrs", "rates", "rate_tables", "tax_profiles",
            "routing_plans", "resellers", "tokens", "audit", "meta", "generation", "session_deadlines")
_SCHEMA_KEY = b"schema_version"
_COUNTER_PREFIX = b"counter:"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32BE = struct.Struct(">I")
_CARD_KEY = struct.Struct(">II")
_U64BE = struct.Struct(">Q")


def lmdb_error(exc: lmdb.Error, map_size: int | None = None) -> StoreError:
    """Translate an lmdb exception into StoreError with a message an operator can act on."""
    if isinstance(exc, lmdb.MapFullError):
        size = f" ({map_size} bytes)" if map_size else ""
        return StoreError(f"LMDB map is full{size}: raise map_size (server.map_size_mb in the "
                          "configuration) and restart every process")
    if isinstance(exc, lmdb.ReadersFullError):
        return StoreError("LMDB reader table is full: raise max_readers (one slot per thread per process)")
    return StoreError(f"LMDB error: {exc}")


class Store:
    """One LMDB environment in directory `path` with radcore's named databases as attributes.

    Open a Store in the process that uses it, after any fork(). An environment owns a memory map, the
    file descriptors of data.mdb/lock.mdb, POSIX fcntl locks (which a forked child does not inherit)
    and reader-table slots registered under the opener's pid. A child using an inherited environment
    shares the parent's reader slots and not its locks, which LMDB documents as undefined behaviour:
    stale readers pin old pages forever, or two processes believe they hold the writer mutex. So
    `radcore serve` forks first and every worker opens its own Store; `begin()` refuses to run in a
    process other than the opener.

    Durability: sync and metasync are on and writemap off by default, so a committed transaction
    (an Accounting-Response we sent) survives power loss. `sync=False` is for tests and benchmarks only.
    `readahead=False` by default because the RADIUS load is random point lookups over a map that may be
    larger than RAM; readahead would evict useful pages.

    A worker's write lane may hold its write transaction open across batches, its changes made durable
    in the meantime by a write-ahead journal (`radcore.journal`). So every write transaction first
    replays what a dead writer journaled and never committed, and, in the process that holds such a
    transaction (`holder`), first makes it commit.
    """

    def __init__(self, path: str | os.PathLike, *, map_size: int = DEFAULT_MAP_SIZE, sync: bool = True,
                 readonly: bool = False, max_readers: int = 256, max_dbs: int = 32,
                 readahead: bool = False):
        self.path = os.fspath(path)
        self.map_size = int(map_size)
        self.readonly = readonly
        self._pid = os.getpid()
        self.env: lmdb.Environment | None = None
        self.journal_dir = os.path.join(self.path, journal.DIRECTORY)
        #: The object (the worker's write lane) whose `flush()` commits a write transaction this
        #: process keeps open between batches; a second write transaction would wait for it forever.
        self.holder: Any = None
        self.waiters: journal.Waiters | None = None
        try:
            if not readonly:
                os.makedirs(self.path, mode=0o700, exist_ok=True)
                os.makedirs(self.journal_dir, mode=0o700, exist_ok=True)
            elif not os.path.isfile(os.path.join(self.path, "data.mdb")):
                raise StoreError(f"{self.path} is not an initialised radcore data directory")
            self.env = lmdb.open(self.path, map_size=self.map_size, subdir=True, readonly=readonly,
                                 create=not readonly, metasync=True, sync=sync, writemap=False,
                                 readahead=readahead, mode=0o600, max_readers=max_readers,
                                 max_dbs=max_dbs, max_spare_txns=1, lock=True)
            # Clear reader slots left by processes that died mid-transaction; they would otherwise keep
            # old pages alive and make the file grow.
            self.env.reader_check()
            if not readonly:
                self.waiters = journal.Waiters(self.journal_dir)
            self._open_dbs()
            if not readonly and journal.journals(self.journal_dir):
                with self.begin(write=True):
                    pass  # replays what a writer that died journaled
        except lmdb.Error as e:
            self.close()
            raise self._error_for_open(e) from e
        except BaseException:
            self.close()
            raise

    def _error_for_open(self, e: lmdb.Error) -> StoreError:
        if isinstance(e, lmdb.NotFoundError) and self.readonly:
            return StoreError(f"{self.path} is not an initialised radcore data directory")
        err = lmdb_error(e, self.map_size)
        return StoreError(f"cannot open store at {self.path}: {err}")

    def _open_dbs(self) -> None:
        env = self.env
        assert env is not None
        if self.readonly:
            self._assign_dbs([env.open_db(name.encode(), create=False) for name in DB_NAMES])
            with env.begin() as txn:
                self._check_schema(txn.get(_SCHEMA_KEY, db=self.meta))
            return
        with self.waiters.waiting():
            txn = env.begin(write=True)
        with txn:
            self._assign_dbs([env.open_db(name.encode(), txn=txn, create=True) for name in DB_NAMES])
            raw = txn.get(_SCHEMA_KEY, db=self.meta)
            if raw is None:
                txn.put(_SCHEMA_KEY, _U32.pack(SCHEMA_VERSION), db=self.meta)
            else:
                self._check_schema(raw)

    def _assign_dbs(self, handles: list[Any]) -> None:
        # Spelled out (not setattr) so tools see the attributes; the order is DB_NAMES.
        self.handles = tuple(handles)
        (self.series, self.cards, self.pins, self.sessions, self.cdrs, self.rates, self.rate_tables,
         self.tax_profiles, self.routing_plans, self.resellers, self.tokens, self.audit, self.meta,
         self.generation, self.session_deadlines) = handles

    def _check_schema(self, raw: bytes | None) -> None:
        if raw is None:
            raise StoreError(f"{self.path} has no schema version: not an initialised radcore data directory")
        found = _U32.unpack(raw)[0] if len(raw) == 4 else None
        if found != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {found}, but this radcore uses schema "
                             f"version {SCHEMA_VERSION}; migrate the data directory or use a matching "
                             "release")

    def error(self, exc: lmdb.Error) -> StoreError:
        return lmdb_error(exc, self.map_size)

    def begin(self, write: bool = False) -> lmdb.Transaction:
        """A raw lmdb Transaction (commits on clean context exit, aborts on exception).

        Another process growing the map surfaces as MapResizedError; adopting the new size and retrying
        once is the documented remedy.
        """
        if self.env is None:
            raise StoreError(f"store at {self.path} is closed")
        if os.getpid() != self._pid:
            raise StoreError(f"store at {self.path} was opened in process {self._pid}; "
                             "open a new Store after fork")
        if write and self.readonly:
            raise StoreError(f"store at {self.path} is open read-only")
        if write and self.holder is not None:
            self.holder.flush()
        try:
            if not write:
                return self._begin(False)
            while True:
                with self.waiters.waiting():
                    txn = self._begin(True)
                try:
                    if not journal.recover(txn, self, self.journal_dir):
                        return txn
                    # Replayed records are committed on their own, before anyone (this caller
                    # included) journals on top of them: two journals with unapplied records
                    # could otherwise be left whose order no file name tells.
                    txn.commit()
                except BaseException:
                    txn.abort()
                    raise
        except lmdb.Error as e:
            raise self.error(e) from e

    def _begin(self, write: bool) -> lmdb.Transaction:
        try:
            return self.env.begin(write=write)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin(write=write)

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[lmdb.Transaction]:
        """Like `begin()` but lmdb errors raised in the body or at commit come out as StoreError."""
        txn = self.begin(write)
        try:
            yield txn
        except lmdb.Error as e:
            txn.abort()
            raise self.error(e) from e
        except BaseException:
            txn.abort()
            raise
        try:
            txn.commit()
        except lmdb.Error as e:
            raise self.error(e) from e

    def close(self) -> None:
        if self.waiters is not None:
            self.waiters.close()
            self.waiters = None
        if self.env is not None:
            self.env.close()
            self.env = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- meta counters ----------------------------------------------------------------------------------

def get_version(txn: lmdb.Transaction, store: Store, name: str = "config_version") -> int:
    """A change counter; hot-path caches compare it to know when series/rates/profiles changed."""
    try:
        raw = txn.get(_COUNTER_PREFIX + name.encode(), db=store.meta)
    except lmdb.Error as e:
        raise store.error(e) from e
    return _U64.unpack(raw)[0] if raw else 0


def bump_version(txn: lmdb.Transaction, store: Store, name: str = "config_version") -> int:
    value = get_version(txn, store, name) + 1
    try:
        txn.put(_COUNTER_PREFIX + name.encode(), _U64.pack(value), db=store.meta)
    except lmdb.Error as e:
        raise store.error(e) from e
    return value


# --- series and card access -------------------------------------------------------------------------

def get_series(txn: lmdb.Transaction, store: Store, number: int) -> Series | None:
    """The series record, complete or not: callers serving RADIUS or listings must check `.complete`."""
    try:
        raw = txn.get(series_key(number), db=store.series)
    except lmdb.Error as e:
        raise store.error(e) from e
    return None if raw is None else Series.from_bytes(raw)


def put_series(txn: lmdb.Transaction, store: Store, series: Series, *, bump: bool = True) -> None:
    """Write a series; `bump` advances config_version so RADIUS caches reload it. Bulk writers that
    change nothing RADIUS reads (generation progress) pass bump=False."""
    try:
        txn.put(series_key(series.number), series.to_bytes(), db=store.series)
        if bump:
            bump_version(txn, store)
    except lmdb.Error as e:
        raise store.error(e) from e


def get_card(txn: lmdb.Transaction, store: Store, key: bytes) -> Card | None:
    try:
        raw = txn.get(key, db=store.cards)
    except lmdb.Error as e:
        raise store.error(e) from e
    return None if raw is None else Card.unpack(raw)


def put_card(txn: lmdb.Transaction, store: Store, key: bytes, card: Card) -> None:
    try:
        txn.put(key, card.pack(), db=store.cards)
    except lmdb.Error as e:
        raise store.error(e) from e


def iter_series_cards(txn: lmdb.Transaction, store: Store, series: int) -> Iterator[tuple[int, Card]]:
    """(serial, Card) in serial order over the series' key range with one cursor; txn must stay open."""
    prefix = series_key(series)
    try:
        cursor = txn.cursor(db=store.cards)
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if key[:4] != prefix:
                return
            yield _CARD_KEY.unpack(key)[1], Card.unpack(value)
    except lmdb.Error as e:
        raise store.error(e) from e


def next_cdr_key(txn: lmdb.Transaction, store: Store, ckey: bytes, stop_time: int) -> bytes:
    """The first free `cdr_key(card_key, stop_time, seq)`: calls of one card may stop in the same second."""
    base = ckey + _U64BE.pack(stop_time)
    last = base + b"\xff\xff\xff\xff"
    try:
        cursor = txn.cursor(db=store.cdrs)
        if cursor.set_range(last):
            if cursor.key() == last:
                raise StoreError("more than 2**32 CDRs for one card in one second")
            found = cursor.prev()
        else:
            found = cursor.last()
        key = cursor.key() if found else b""
    except lmdb.Error as e:
        raise store.error(e) from e
    seq = _U32BE.unpack(key[16:20])[0] + 1 if len(key) == 20 and key[:16] == base else 0
    return base + _U32BE.pack(seq)


def iter_card_cdrs(txn: lmdb.Transaction, store: Store, ckey: bytes) -> Iterator[tuple[bytes, Cdr]]:
    """(cdr key, Cdr) for one card in stop-time order."""
    try:
        cursor = txn.cursor(db=store.cdrs)
        if not cursor.set_range(ckey):
            return
        for key, value in cursor:
            if key[:8] != ckey:
                return
            yield key, Cdr.unpack(value)
    except lmdb.Error as e:
        raise store.error(e) from e


def append_cdr(txn: lmdb.Transaction, store: Store, ckey: bytes, cdr: Cdr) -> bytes:
    """Store one settled call under the next free sequence number for its stop second; returns the key."""
    key = next_cdr_key(txn, store, ckey, cdr.stop_time)
    try:
        txn.put(key, cdr.pack(), db=store.cdrs)
    except lmdb.Error as e:
        raise store.error(e) from e
    return key


# --- sessions and their deadline index --------------------------------------------------------------
# `session_deadlines` holds u64 BE deadline + stored key -> b"", so the sweeper finds what is due with
# one cursor walk from the start instead of scanning every open call and tombstone. put_session and
# delete_session keep it in step; write sessions only through them.
#
# A stopped call's session (its tombstone, kept `session_retention_seconds` so that a late duplicate
# Stop is recognised and never charged twice) is stored under TOMBSTONE + session key: a key range of
# its own after every open call, since a UTF-8 key never starts with 0xFF. Open calls are few and
# written three times each (authorize, Start, Stop); tombstones are a day's worth of calls. Keyed
# together, each of those writes lands on its own page of a B-tree the size of a day's calls, and a
# group commit writes and fsyncs every such page; apart, the open calls of a whole batch share a
# handful of pages. A tombstone an older release kept under the plain key is still found (the plain
# key is looked up first) and moves to the tombstone range when next written.

TOMBSTONE = b"\xff"


def _deadline_key(deadline: int, stored: bytes) -> bytes:
    return _U64BE.pack(max(deadline, 0)) + stored


def _stored_key(skey: bytes, session: Session) -> bytes:
    return TOMBSTONE + skey if session.state == SessionState.STOPPED else skey


def put_session(txn: lmdb.Transaction, store: Store, skey: bytes, session: Session) -> None:
    where = _stored_key(skey, session)
    try:
        for stored in (skey, TOMBSTONE + skey):
            old = txn.get(stored, db=store.sessions)
            if old is None:
                continue
            old_deadline = Session._FIXED.unpack_from(old)[4]
            if stored != where or old_deadline != session.deadline:
                txn.delete(_deadline_key(old_deadline, stored), db=store.session_deadlines)
            if stored != where:
                txn.delete(stored, db=store.sessions)
        txn.put(where, session.pack(), db=store.sessions)
        txn.put(_deadline_key(session.deadline, where), b"", db=store.session_deadlines)
    except lmdb.Error as e:
        raise store.error(e) from e


def delete_session(txn: lmdb.Transaction, store: Store, skey: bytes,
                   session: Session | None = None) -> bool:
    """Remove a session (open or tombstone) and its deadline entry; `session` (as stored) saves a
    read when the caller has it."""
    try:
        if session is None:
            session = get_session(txn, store, skey)
            if session is None:
                return False
        deleted = False
        for stored in (skey, TOMBSTONE + skey):
            txn.delete(_deadline_key(session.deadline, stored), db=store.session_deadlines)
            deleted = txn.delete(stored, db=store.sessions) or deleted
        return deleted
    except lmdb.Error as e:
        raise store.error(e) from e


def get_session(txn: lmdb.Transaction, store: Store, skey: bytes) -> Session | None:
    """The call's session, open or stopped (a tombstone)."""
    try:
        raw = txn.get(skey, db=store.sessions)
        if raw is None:
            raw = txn.get(TOMBSTONE + skey, db=store.sessions)
    except lmdb.Error as e:
        raise store.error(e) from e
    return None if raw is None else Session.unpack(raw)


def iter_sessions(txn: lmdb.Transaction, store: Store, nas: str) -> Iterator[tuple[bytes, Session]]:
    """(session key, Session) of one NAS's open calls: its key range `nas NUL ...` (Accounting-On/Off
    releases them). Tombstones are not walked, except those an older release kept in that range."""
    prefix = nas.encode() + b"\x00"
    for key, session in iter_session_range(txn, store, prefix):
        if key[:len(prefix)] != prefix:
            return
        yield key, session


def iter_session_range(txn: lmdb.Transaction, store: Store, start: bytes = b"", *,
                       tombstones: bool = False) -> Iterator[tuple[bytes, Session]]:
    """(session key, Session) from `start` on, in session-key order: the open calls, merged with the
    tombstones when `tombstones` (so a listing pages the same way whichever range a call is in)."""
    def walk(low: bytes, high: bytes | None, mark: int) -> Iterator[tuple[bytes, bytes]]:
        cursor = txn.cursor(db=store.sessions)
        if not cursor.set_range(low):
            return
        for key, value in cursor:
            if high is not None and key >= high:
                return
            yield key[mark:], value
    ranges = [walk(start, TOMBSTONE, 0)]
    if tombstones:
        ranges.append(walk(TOMBSTONE + start, None, len(TOMBSTONE)))
    try:
        for key, value in heapq.merge(*ranges, key=lambda item: item[0]):
            yield key, Session.unpack(value)
    except lmdb.Error as e:
        raise store.error(e) from e


def iter_expired_sessions(txn: lmdb.Transaction, store: Store, now: int,
                          limit: int = 1000) -> list[tuple[bytes, Session]]:
    """Up to `limit` (session key, Session) whose deadline <= now, earliest first. Needs a write txn:
    index entries left behind by a session written or deleted behind put_session's back are removed
    here, so they cannot pile up at the front of the index."""
    due: list[tuple[bytes, Session]] = []
    stale: list[bytes] = []
    try:
        cursor = txn.cursor(db=store.session_deadlines)
        for ikey in cursor.iternext(values=False):
            deadline = _U64BE.unpack(ikey[:8])[0]
            if deadline > now or len(due) >= limit:
                break
            stored = ikey[8:]
            raw = txn.get(stored, db=store.sessions)
            session = None if raw is None else Session.unpack(raw)
            if session is None or max(session.deadline, 0) != deadline:
                stale.append(ikey)
            else:
                due.append((stored[len(TOMBSTONE):] if stored[:1] == TOMBSTONE else stored, session))
        for ikey in stale:
            txn.delete(ikey, db=store.session_deadlines)
    except lmdb.Error as e:
        raise store.error(e) from e
    return due
