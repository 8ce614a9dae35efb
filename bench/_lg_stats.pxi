# Clocks and latency histograms: included by bench/_loadgen.pyx (one module, one namespace). The
# monotonic clock paces a run; a latency runs on the realtime clock, to the kernel's receive stamp of
# the reply. Histograms are log-linear (lg_hist_index in _lg_primitives.h), and bench.loadgen reads
# them through HIST_BUCKETS, hist_value and hist_index.


cdef extern from "<sys/socket.h>":
    # Kernel receive timestamps (socket(7) SO_TIMESTAMPNS): a reply's arrival time, whatever this
    # process was doing when it arrived.
    cdef struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr* CMSG_FIRSTHDR(void* msgh) nogil
    cmsghdr* CMSG_NXTHDR(void* msgh, cmsghdr* cmsg) nogil
    unsigned char* CMSG_DATA(cmsghdr* cmsg) nogil
    int SOL_SOCKET
    int SO_TIMESTAMPNS
    int SCM_TIMESTAMPNS
    int setsockopt(int fd, int level, int name, const void* value, unsigned int length)


cdef extern from "_lg_primitives.h":
    int lg_hist_index(uint64_t v) nogil
    int LG_HIST_BUCKETS


HIST_BUCKETS = LG_HIST_BUCKETS


cdef inline int64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t _realtime() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t _arrival(mmsghdr* msg) noexcept nogil:
    """The kernel's receive timestamp of a datagram (realtime ns), or 0 if it brought none."""
    cdef cmsghdr* c = CMSG_FIRSTHDR(&msg.msg_hdr)
    cdef timespec ts
    while c != NULL:
        if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
            memcpy(&ts, CMSG_DATA(c), sizeof(timespec))
            return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
        c = CMSG_NXTHDR(&msg.msg_hdr, c)
    return 0


def hist_value(int index) -> float:
    """The latency in nanoseconds a histogram bucket stands for (its midpoint)."""
    if index < 128:
        return float(index)
    cdef int e = (index - 128) // 64 + 1
    cdef uint64_t m = (index - 128) % 64 + 64
    return ((m << e) + ((m + 1) << e) - 1) / 2.0


def hist_index(uint64_t value) -> int:
    return lg_hist_index(value)
