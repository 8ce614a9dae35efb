# A thread that flushes the journal while the worker goes on. Included by _held.pxi.
#
# Under load the worker's batches are journaled, and each journal record is flushed (fdatasync) before
# its replies leave. The flush is a disk round trip during which the worker's core idles: measured with
# the flush left out of a backlog (an unsafe build, for the measurement only), accounting answered 30 %
# more requests per second and the full call flow 15 % more. So the record's flush runs here, on a
# thread of its own, while the worker reads and decides the next batch into the same transaction; the
# batch's replies wait for the flush (radcore._lane.Lane.serve holds them until `settle`).
# A plain pthread rather than a Python thread: it never needs the interpreter, so handing it work
# and collecting its result take no GIL hand-offs on the worker's single core.

from libc.errno cimport errno

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t* thread, const void* attr, void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** result)
    int pthread_mutex_init(pthread_mutex_t* mutex, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)
    int pthread_cond_init(pthread_cond_t* cond, const void* attr)
    int pthread_cond_destroy(pthread_cond_t* cond)
    int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex)
    int pthread_cond_broadcast(pthread_cond_t* cond)

cdef extern from "<unistd.h>" nogil:
    int fdatasync(int fd)


cdef struct _SyncState:
    pthread_mutex_t lock
    pthread_cond_t changed      # signalled on every change of the fields below
    int fd                      # the file to flush next
    bint requested              # a flush of fd is wanted (and not yet begun)
    bint busy                   # requested or running: `wait` blocks until it clears
    int error                   # errno of the last flush, 0 when it succeeded
    bint quit


cdef void* _sync_main(void* arg) noexcept nogil:
    cdef _SyncState* s = <_SyncState*>arg
    cdef int fd, error
    pthread_mutex_lock(&s.lock)
    while True:
        while not s.requested and not s.quit:
            pthread_cond_wait(&s.changed, &s.lock)
        if not s.requested:
            break
        fd = s.fd
        s.requested = False
        pthread_mutex_unlock(&s.lock)
        error = 0
        if fdatasync(fd) != 0:
            error = errno
        pthread_mutex_lock(&s.lock)
        s.error = error
        s.busy = False
        pthread_cond_broadcast(&s.changed)
    pthread_mutex_unlock(&s.lock)
    return NULL


cdef class Syncer:
    """One flush at a time in the background: `start(fd)`, then `wait()` for its errno (0: flushed).

    The thread starts at the first `start`, in the process that uses it (a worker forks first), and
    is joined when the object goes.
    """

    cdef _SyncState state
    cdef pthread_t thread
    cdef bint running

    def __cinit__(self):
        pthread_mutex_init(&self.state.lock, NULL)
        pthread_cond_init(&self.state.changed, NULL)

    def __dealloc__(self):
        if self.running:
            with nogil:
                pthread_mutex_lock(&self.state.lock)
                self.state.quit = True
                pthread_cond_broadcast(&self.state.changed)
                pthread_mutex_unlock(&self.state.lock)
                pthread_join(self.thread, NULL)  # after a flush in flight, if any, has finished
        pthread_cond_destroy(&self.state.changed)
        pthread_mutex_destroy(&self.state.lock)

    cdef int start(self, int fd) except -1:
        """Begin flushing `fd`; the previous flush must have been waited for."""
        cdef int rc
        if self.state.busy:
            raise RuntimeError("a journal flush is already in flight")
        if not self.running:
            rc = pthread_create(&self.thread, NULL, _sync_main, &self.state)
            if rc != 0:
                raise OSError(rc, "cannot start the journal flush thread")
            self.running = True
        with nogil:
            pthread_mutex_lock(&self.state.lock)
            self.state.fd = fd
            self.state.requested = True
            self.state.busy = True
            pthread_cond_broadcast(&self.state.changed)
            pthread_mutex_unlock(&self.state.lock)
        return 0

    cdef bint done(self) noexcept:
        """Whether the flush begun by `start` has finished (`wait` would not block)."""
        cdef bint busy
        with nogil:
            pthread_mutex_lock(&self.state.lock)
            busy = self.state.busy
            pthread_mutex_unlock(&self.state.lock)
        return not busy

    cdef int wait(self) noexcept:
        """Block until the flush begun by `start` is done; its errno (0: the data is on disk)."""
        cdef int error
        with nogil:
            pthread_mutex_lock(&self.state.lock)
            while self.state.busy:
                pthread_cond_wait(&self.state.changed, &self.state.lock)
            error = self.state.error
            pthread_mutex_unlock(&self.state.lock)
        return error
