# The write lane's transaction: durable at the end of every batch, and under a backlog held open
# across batches behind the write-ahead journal. Included by _acctlane.pyx.

from cpython.mem cimport PyMem_Free, PyMem_Realloc
from radcore._lane cimport _monotonic_ns

from radcore import journal
from radcore.errors import StoreError

include "_syncer.pxi"

cdef uint8_t PUT_OP = journal.PUT
cdef uint8_t DELETE_OP = journal.DELETE


cdef class HeldTransaction:
    """One write transaction at a time over `store`, and how each batch in it becomes durable.

    `end_batch(more)` commits it, unless more requests are already waiting, `checkpoint_ms` has not
    run out and nobody else waits for the write lock: then the batch's puts and deletes, collected
    by `put` and `delete` in radcore.journal's encoding, are appended to this process's journal
    instead, and the transaction stays open for the next batch. The record's flush runs on the
    `Syncer` thread while the caller decides the next batch; `end_batch` then returns 1, and the
    batch's replies wait for `settle`. The next `end_batch`, `checkpoint` or loss of the transaction
    waits for that flush first, so a record is never written after one that is not yet on disk. The
    commit that ends such a run (`checkpoint`) records in the store how much of the journal it
    holds. If the transaction is lost instead, the journal is closed, which hands its flushed records
    to recovery: the next write transaction, in this process or any other, replays them
    (radcore.journal.recover). A flush that fails loses the transaction, and `settle` raises.
    """

    cdef object store
    cdef public object txn            # the open write transaction, or None
    cdef object _txn_put, _txn_delete  # its methods, called with positional arguments
    cdef object journal               # radcore.journal.JournalWriter, opened at the first append
    cdef uint8_t* ops                 # this batch's puts and deletes, encoded for the journal ...
    cdef Py_ssize_t ops_n, ops_cap    # ... in this many octets of a buffer of ops_cap
    cdef int64_t hold_ns              # server.checkpoint_ms (0: commit every batch)
    cdef int64_t opened_ns            # when txn was opened
    cdef bint journaled               # txn holds batches that only the journal has made durable
    cdef public long long appends     # batches made durable by a journal append
    cdef public long long checkpoints  # commits of a transaction that held journaled batches
    cdef Syncer syncer                # flushes the last record in the background
    cdef bint syncing                 # that flush is in flight (or done and not yet collected)
    cdef Py_ssize_t sync_end          # the journal offset after the record being flushed
    cdef object failed                # StoreError of a failed flush, until `settle` raises it

    def __init__(self, store):
        self.store = store
        self.txn = None
        self.syncer = Syncer()
        self.failed = None

    def __dealloc__(self):
        PyMem_Free(self.ops)

    def hold(self, int checkpoint_ms):
        if checkpoint_ms < 0:
            raise ValueError("checkpoint_ms must be >= 0")
        self.flush()
        self.hold_ns = <int64_t>checkpoint_ms * 1000000
        # Anything else in this process that opens a write transaction must commit this one first.
        self.store.holder = self if checkpoint_ms else None
        if not checkpoint_ms and self.journal is not None:
            self.journal.close()
            self.journal = None

    def flush(self):
        if self.txn is not None or self.syncing:
            self.checkpoint()

    def flush_due(self):
        if self.txn is not None and _monotonic_ns() - self.opened_ns >= self.hold_ns:
            self.checkpoint()

    cdef bint open(self) except -1:
        """Start a batch: a new write transaction unless one is held (True if new)."""
        self.ops_n = 0
        if self.txn is not None:
            return False
        self.txn = self.store.begin(write=True)
        self.opened_ns = _monotonic_ns()
        self._txn_put, self._txn_delete = self.txn.put, self.txn.delete
        return True

    cdef int end_batch(self, bint more) except -1:
        """Make the batch durable: a journal record if `more` requests wait (see the class), else a
        commit. Returns 1 if its record is still being flushed (the replies wait for `settle`), else
        0: durable now."""
        self._collect()
        if self.txn is None:
            raise StoreError("the write transaction was lost with an earlier batch's journal flush")
        if (more and self.hold_ns and _monotonic_ns() - self.opened_ns < self.hold_ns
                and not self.store.waiters.any()):  # nobody else is waiting to write
            if not self.ops_n:
                return 0
            if self.journal is None:
                self.journal = journal.JournalWriter(self.store.journal_dir)
            self.sync_end = self.journal.write(PyBytes_FromStringAndSize(<const char*>self.ops, self.ops_n))
            self.ops_n = 0
            self.journaled = True
            self.appends += 1
            self.syncer.start(self.journal.fd)
            self.syncing = True
            return 1
        self.checkpoint()
        return 0

    cdef int settle(self) except -1:
        """Wait until the batch `end_batch` returned 1 for is on disk; raise StoreError if its
        flush failed (the transaction and that batch are lost, earlier batches are not)."""
        self._collect()
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise failed
        return 0

    cdef bint flushed(self) noexcept:
        """Whether `settle` would return without waiting."""
        return not self.syncing or self.syncer.done()

    cdef int _collect(self) except -1:
        """Wait for the flush in flight, if any, and act on its outcome: the record counts, or the
        journal is cut back and the transaction lost."""
        cdef int error
        if not self.syncing:
            return 0
        self.syncing = False
        error = self.syncer.wait()
        if not error:
            self.journal.flushed(self.sync_end)
            return 0
        self.failed = self.journal.failed(error)
        if self.txn is not None:
            txn, self.txn = self.txn, None
            self._txn_put = self._txn_delete = None
            self.ops_n = 0
            self._lost(txn)
        return 0

    cdef int checkpoint(self) except -1:
        """Commit durably; the commit records that every journaled batch is in the store."""
        self._collect()
        if self.txn is None:
            return 0  # lost with a failed flush: `settle` reports it
        txn, self.txn = self.txn, None
        self._txn_put = self._txn_delete = None
        self.ops_n = 0
        try:
            if self.journaled:
                self.journal.mark(txn, self.store.meta)
            txn.commit()
        except BaseException:
            self._lost(txn)
            raise
        if self.journaled:
            self.journaled = False
            self.checkpoints += 1
            self.journal.rotate_if_large()
        return 0

    cdef int abort_batch(self) except -1:
        """Forget this batch's writes. Earlier batches of the open transaction were answered on
        the journal's strength: if this batch wrote nothing the transaction stays open for its
        checkpoint, else all of it goes and the journal is handed to recovery."""
        txn = self.txn
        if txn is None or self.journaled and not self.ops_n:
            return 0
        self.txn = None
        self._txn_put = self._txn_delete = None
        self.ops_n = 0
        self._lost(txn)
        return 0

    cdef int _lost(self, object txn) except -1:
        """`txn` will not commit: abort it and, if it held journaled batches, close the journal so
        the next write transaction (this process's own included) replays the flushed ones."""
        self._collect()
        txn.abort()
        if self.journaled:
            self.journaled = False
            self.journal.close()
            self.journal = None
        return 0

    cdef bint put(self, bytes key, bytes value, bint overwrite, object db, uint8_t dbid) except -1:
        """txn.put, and the same put for the journal."""
        if not self._txn_put(key, value, True, overwrite, False, db):
            return False
        if self.hold_ns:
            self._log(PUT_OP, dbid, key, value)
        return True

    cdef int delete(self, bytes key, object db, uint8_t dbid) except -1:
        """txn.delete, and the same delete for the journal."""
        self._txn_delete(key, b"", db)
        if self.hold_ns:
            self._log(DELETE_OP, dbid, key, b"")
        return 0

    cdef int _log(self, uint8_t op, uint8_t dbid, bytes key, bytes value) except -1:
        """Append one operation to `ops` as radcore.journal.encode_op spells it."""
        cdef Py_ssize_t kn = PyBytes_GET_SIZE(key), vn = PyBytes_GET_SIZE(value)
        cdef Py_ssize_t need = self.ops_n + 8 + kn + vn, cap
        cdef uint8_t* grown
        if need > self.ops_cap:
            cap = self.ops_cap * 2 if self.ops_cap else 1 << 16
            while cap < need:
                cap *= 2
            grown = <uint8_t*>PyMem_Realloc(self.ops, cap)
            if grown == NULL:
                raise MemoryError()
            self.ops, self.ops_cap = grown, cap
        cdef uint8_t* p = self.ops + self.ops_n
        self.ops_n = need
        p[0] = op
        p[1] = dbid
        p[2] = <uint8_t>(kn & 0xFF)
        p[3] = <uint8_t>(kn >> 8)
        p[4] = <uint8_t>(vn & 0xFF)
        p[5] = <uint8_t>((vn >> 8) & 0xFF)
        p[6] = <uint8_t>((vn >> 16) & 0xFF)
        p[7] = <uint8_t>(vn >> 24)
        memcpy(p + 8, PyBytes_AS_STRING(key), kn)
        memcpy(p + 8 + kn, PyBytes_AS_STRING(value), vn)
        return 0
