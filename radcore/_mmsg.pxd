# The Linux batched-datagram calls (recvmmsg(2), sendmmsg(2)) and the address structures around them,
# declared once for the worker's C loop (radcore/_lane.pyx) and the load generator (bench/_loadgen.pyx).
# Declarations only: nothing here is compiled on its own.

from libc.stdint cimport uint16_t, uint32_t
from posix.time cimport timespec


cdef extern from "<sys/uio.h>":
    cdef struct iovec:
        void* iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>":
    # recvmmsg/sendmmsg are GNU extensions; Python.h has already defined _GNU_SOURCE via pyconfig.h.
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    cdef struct sockaddr:
        sa_family_t sa_family
    cdef struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags) nogil
    int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags, timespec* timeout) nogil
    int MSG_DONTWAIT
    int AF_INET
    int AF_INET6


cdef extern from "<netinet/in.h>":
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct in6_addr:
        pass
    cdef struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    cdef struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t ntohs(uint16_t)
    uint16_t htons(uint16_t)
    uint32_t ntohl(uint32_t)
    uint32_t htonl(uint32_t)


cdef extern from "<arpa/inet.h>":
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)
    int inet_pton(int af, const char* src, void* dst)
