# Socket addresses between the kernel's sockaddr and the tuples Python's socket module uses.
# Included by _lane.pyx: the Python path and the duplicate cache see a datagram's source exactly as
# recvfrom would have reported it, and queued replies go back as sockaddrs.


cdef str _source_text(const sockaddr* sa, dict memo):
    """The address of `sa` as text, as the socket module spells it; IPv4 texts memoised in `memo`
    (host-order address -> str), which is cleared when it passes 65,536 entries."""
    cdef const sockaddr_in* v4
    cdef char text[ADDR_TEXT]
    cdef uint32_t host
    if sa.sa_family == AF_INET:
        v4 = <const sockaddr_in*>sa
        host = ntohl(v4.sin_addr.s_addr)
        ip = memo.get(host)
        if ip is None:
            inet_ntop(AF_INET, &v4.sin_addr, text, ADDR_TEXT)
            ip = text.decode("ascii")
            if len(memo) > 65536:
                memo.clear()
            memo[host] = ip
        return ip
    if sa.sa_family == AF_INET6:
        inet_ntop(AF_INET6, &(<const sockaddr_in6*>sa).sin6_addr, text, ADDR_TEXT)
        return text.decode("ascii")
    raise PacketError(f"datagram from address family {sa.sa_family}", "unknown_client")


cdef object _source_address(const sockaddr* sa, dict memo):
    """`sa` as the socket module reports a source: (ip, port) or (ip, port, flow, scope)."""
    cdef const sockaddr_in6* v6
    if sa.sa_family == AF_INET:
        return (_source_text(sa, memo), ntohs((<const sockaddr_in*>sa).sin_port))
    if sa.sa_family == AF_INET6:
        v6 = <const sockaddr_in6*>sa
        return (_source_text(sa, memo), ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo), v6.sin6_scope_id)
    raise PacketError(f"datagram from address family {sa.sa_family}", "unknown_client")


cdef socklen_t _sockaddr_of(object addr, uint8_t* name) except 0:
    """Write the socket-module address tuple `addr` into `name` (NAME octets) as a sockaddr;
    returns its length. ValueError if addr[0] is not an IPv4 or IPv6 address."""
    cdef sockaddr_in* v4 = <sockaddr_in*>name
    cdef sockaddr_in6* v6 = <sockaddr_in6*>name
    cdef bytes host = addr[0].encode("ascii")
    memset(name, 0, NAME)
    if inet_pton(AF_INET, host, &v4.sin_addr) == 1:
        v4.sin_family = AF_INET
        v4.sin_port = htons(addr[1])
        return sizeof(sockaddr_in)
    if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1:
        v6.sin6_family = AF_INET6
        v6.sin6_port = htons(addr[1])
        if len(addr) >= 4:
            v6.sin6_flowinfo = htonl(addr[2])
            v6.sin6_scope_id = addr[3]
        return sizeof(sockaddr_in6)
    raise ValueError(f"not an IP address: {addr[0]!r}")
