"""The write-ahead journal: accounting made durable by one sequential append while LMDB commits later.

A durable LMDB commit writes every page the transaction touched and flushes them: with gateway-like
call ids each accounting request lands on pages of its own (its session, its card, its CDR, the
deadline index), so a batch of a few hundred requests writes thousands of scattered pages. While
requests keep arriving faster than that, the worker's write lane (`radcore._acctlane`) keeps its
write transaction open across batches instead. Each batch's changes are appended here as one record
and flushed with fdatasync before any of its replies leave. LMDB then commits the accumulated
transaction (a checkpoint) at most `server.checkpoint_ms` later, or as soon as the backlog is gone.
The checkpoint's own transaction records how much of the journal it holds.

Records are physical: the exact puts and deletes of the batch, keyed by database. Replaying them
needs no configuration, rating or clock, and replaying a suffix twice leaves the same bytes.

Recovery relies on one invariant. A journal's records beyond its applied offset exist only while
its writer holds the LMDB write lock (the open transaction), so whoever next takes the lock after
that writer died finds them and must replay them before doing anything else: `Store.begin(write=True)`
calls `recover` first, and commits a replay on its own, so that no newer journal is ever written on
top of an uncommitted one (the two could not be told apart by order later). A live writer holds an
exclusive flock(2) on its file, which is how recovery tells a dead writer's journal from a live
one's; the kernel drops the lock when the process dies.

A writer holding its transaction open must not starve the others (a second worker, the control
plane's generation and fee runs): anyone about to wait for the LMDB write lock holds a shared flock
on `writers.lock` in the journal directory while it waits (`Waiters`), and the holder, at the end of
each batch, lets go (commits) instead of journaling if it cannot take that lock exclusively.

File format: records of `<payload length u32, crc32 u32>` followed by the payload, a sequence of
`<op u8, database u8, key length u16, value length u32>` + key + value. A torn or corrupt last record
is one whose fdatasync never returned, so nobody was answered on its strength: replay stops there.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from radcore.errors import StoreError

if TYPE_CHECKING:
    import lmdb

    from radcore.store import Store

DIRECTORY = "journal"
SUFFIX = ".log"
WAITERS = "writers.lock"
META_PREFIX = b"journal:"            # + file name -> applied offset (u64), in the `meta` database
PUT, DELETE = 1, 2
RECORD = struct.Struct("<II")        # payload length, crc32 of the payload
OP = struct.Struct("<BBHI")          # op, database index (radcore.store.DB_NAMES), key len, value len
_U64 = struct.Struct("<Q")
ROTATE_BYTES = 64 << 20              # a journal this long is replaced by a fresh file at a checkpoint


def encode_op(op: int, db: int, key: bytes, value: bytes = b"") -> bytes:
    """One put or delete as the payload carries it."""
    return OP.pack(op, db, len(key), len(value)) + key + value


def decode_ops(payload: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(op, database index, key, value) of one record's payload, in order."""
    pos, end = 0, len(payload)
    while pos < end:
        if pos + OP.size > end:
            raise StoreError("journal record ends inside an operation header")
        op, db, klen, vlen = OP.unpack_from(payload, pos)
        pos += OP.size
        if op not in (PUT, DELETE) or pos + klen + vlen > end:
            raise StoreError(f"journal record holds a malformed operation at octet {pos - OP.size}")
        key = payload[pos:pos + klen]
        value = payload[pos + klen:pos + klen + vlen]
        pos += klen + vlen
        yield op, db, key, value


def read_records(data: bytes, start: int = 0) -> tuple[list[bytes], int]:
    """The whole records of `data` from `start`, and the offset after the last one: a torn or
    corrupt record and anything after it are left out."""
    records, pos = [], start
    while pos + RECORD.size <= len(data):
        length, crc = RECORD.unpack_from(data, pos)
        body = pos + RECORD.size
        if length == 0 or body + length > len(data):  # a record holds at least one operation
            break
        payload = data[body:body + length]
        if zlib.crc32(payload) != crc:
            break
        records.append(payload)
        pos = body + length
    return records, pos


def _header(payload: bytes | bytearray) -> bytes:
    return RECORD.pack(len(payload), zlib.crc32(payload))


def frame(payload: bytes) -> bytes:
    """One record as the file holds it."""
    return _header(payload) + payload


class JournalWriter:
    """One process's journal file, locked for as long as the process may still append to it."""

    def __init__(self, directory: str):
        self.directory = directory
        self.fd = -1
        self.name = ""
        self.offset = 0          # octets written and flushed
        self._serial = 0
        self._open()

    def _open(self) -> None:
        while True:
            self._serial += 1
            name = f"{os.getpid()}-{self._serial}{SUFFIX}"
            try:
                fd = os.open(os.path.join(self.directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # a dead process with our pid left it: recovery's to take
                continue
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _fsync_directory(self.directory)  # the file must outlive a crash before anything relies on it
        except OSError:
            os.close(fd)
            raise
        self.fd, self.name, self.offset = fd, name, 0

    def write(self, payload: bytes | bytearray) -> int:
        """Write one record after the flushed ones without flushing it; returns the offset after it,
        for `flushed` once an fdatasync has returned (the write lane runs that on a thread of its
        own). Nothing may be written after an unflushed record: each record waits for the one
        before it to be flushed or cut."""
        header = _header(payload)
        size = len(header) + len(payload)
        try:
            written = os.pwritev(self.fd, [header, payload], self.offset)
            if written != size:
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            raise self.failed(exc.errno) from exc
        return self.offset + size

    def flushed(self, end: int) -> None:
        """The record `write` returned `end` for is on disk: recovery may rely on it."""
        self.offset = end

    def failed(self, error: int) -> StoreError:
        """A write or flush failed with `error` (an errno): drop what was written after the last
        flushed record, and the error to raise."""
        try:
            os.ftruncate(self.fd, self.offset)
        except OSError:
            pass
        return StoreError(f"journal {self.name}: {os.strerror(error)}")

    def mark(self, txn: lmdb.Transaction, meta_db) -> None:
        """Record in `txn` (the checkpoint) that everything flushed so far is in the store."""
        txn.put(META_PREFIX + self.name.encode(), _U64.pack(self.offset), db=meta_db)

    def rotate_if_large(self) -> None:
        """After a checkpoint: start a fresh file once this one is long. The old one is fully
        applied; unlocked, it is a dead writer's, and the next recovery deletes it."""
        if self.offset >= ROTATE_BYTES:
            self.close()
            self._open()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Waiters:
    """The writers waiting for the LMDB write lock, as a shared flock each on one file."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, WAITERS)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a wait for the write lock: a holder that checks `any()` lets go. Each wait locks
        its own open of the file, since a flock belongs to the open file: threads of one process
        (the control plane's) sharing one would end each other's waits."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # drops the lock

    def any(self) -> bool:
        """Whether another writer (another process, or another open of the file) is waiting."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journals(directory: str) -> list[str]:
    """The journal files in `directory`, live or dead, by name."""
    try:
        return sorted(e.name for e in os.scandir(directory) if e.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []


def recover(txn: lmdb.Transaction, store: Store, directory: str) -> int:
    """Replay, inside `txn` (a write transaction just begun), every dead writer's unapplied records;
    delete the files of dead writers that were already fully applied. Returns the records replayed."""
    replayed = 0
    for name in journals(directory):
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # another process's recovery deleted it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer: outside its transaction, its journal is fully applied
            meta_key = META_PREFIX + name.encode()
            raw = txn.get(meta_key, db=store.meta)
            applied = _U64.unpack(raw)[0] if raw is not None else 0
            size = os.fstat(fd).st_size
            if size <= applied:
                os.unlink(path)  # applied by a committed transaction: nothing left to keep it for
                txn.delete(meta_key, db=store.meta)
                continue
            data = os.pread(fd, size - applied, applied)
            records, _ = read_records(data)
            for payload in records:
                _apply(txn, store, payload)
            replayed += len(records)
            # A torn tail was never acknowledged: the file counts as applied to its end.
            txn.put(meta_key, _U64.pack(size), db=store.meta)
        finally:
            os.close(fd)
    return replayed


def _apply(txn: lmdb.Transaction, store: Store, payload: bytes) -> None:
    handles = store.handles
    for op, db, key, value in decode_ops(payload):
        if db >= len(handles):
            raise StoreError(f"journal record names database {db}, which this store does not have")
        if op == PUT:
            txn.put(key, value, db=handles[db])
        else:
            txn.delete(key, db=handles[db])
