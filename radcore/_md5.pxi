# Included by radcore/_fastpath.pyx (one module, one namespace): the MD5 and HMAC-MD5 every RADIUS
# authenticator is made of.

# =============================================================================================
# MD5 (RFC 1321) and HMAC-MD5 (RFC 2104)
#
# The 64 steps are written out as in RFC 1321 §3.4 / Appendix A.3; T[i] = floor(2**32 * abs(sin(i))).
# Checked against hashlib on random inputs of every length around the block boundaries
# (tests/test_packet.py::test_md5_matches_hashlib).


cdef inline uint32_t _rotl(uint32_t x, int s) noexcept nogil:
    return (x << s) | (x >> (32 - s))


cdef inline uint32_t _ff(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x, int s,
                         uint32_t t) noexcept nogil:
    # F(b, c, d) = (b & c) | (~b & d), written with one operation less
    return _rotl(a + (d ^ (b & (c ^ d))) + x + t, s) + b


cdef inline uint32_t _gg(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x, int s,
                         uint32_t t) noexcept nogil:
    # G(b, c, d) = (b & d) | (c & ~d), likewise
    return _rotl(a + (c ^ (d & (b ^ c))) + x + t, s) + b


cdef inline uint32_t _hh(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x, int s,
                         uint32_t t) noexcept nogil:
    return _rotl(a + (b ^ c ^ d) + x + t, s) + b


cdef inline uint32_t _ii(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x, int s,
                         uint32_t t) noexcept nogil:
    return _rotl(a + (c ^ (b | ~d)) + x + t, s) + b


cdef void _md5_block(uint32_t* st, const uint8_t* p) noexcept nogil:
    """Compress one 64-octet block into the chaining state (RFC 1321 §3.4)."""
    cdef uint32_t x[16]
    cdef int i
    for i in range(16):
        x[i] = (<uint32_t>p[4 * i] | (<uint32_t>p[4 * i + 1] << 8) | (<uint32_t>p[4 * i + 2] << 16)
                | (<uint32_t>p[4 * i + 3] << 24))
    cdef uint32_t a = st[0]
    cdef uint32_t b = st[1]
    cdef uint32_t c = st[2]
    cdef uint32_t d = st[3]
    # Round 1
    a = _ff(a, b, c, d, x[0], 7, 0xd76aa478)
    d = _ff(d, a, b, c, x[1], 12, 0xe8c7b756)
    c = _ff(c, d, a, b, x[2], 17, 0x242070db)
    b = _ff(b, c, d, a, x[3], 22, 0xc1bdceee)
    a = _ff(a, b, c, d, x[4], 7, 0xf57c0faf)
    d = _ff(d, a, b, c, x[5], 12, 0x4787c62a)
    c = _ff(c, d, a, b, x[6], 17, 0xa8304613)
    b = _ff(b, c, d, a, x[7], 22, 0xfd469501)
    a = _ff(a, b, c, d, x[8], 7, 0x698098d8)
    d = _ff(d, a, b, c, x[9], 12, 0x8b44f7af)
    c = _ff(c, d, a, b, x[10], 17, 0xffff5bb1)
    b = _ff(b, c, d, a, x[11], 22, 0x895cd7be)
    a = _ff(a, b, c, d, x[12], 7, 0x6b901122)
    d = _ff(d, a, b, c, x[13], 12, 0xfd987193)
    c = _ff(c, d, a, b, x[14], 17, 0xa679438e)
    b = _ff(b, c, d, a, x[15], 22, 0x49b40821)
    # Round 2
    a = _gg(a, b, c, d, x[1], 5, 0xf61e2562)
    d = _gg(d, a, b, c, x[6], 9, 0xc040b340)
    c = _gg(c, d, a, b, x[11], 14, 0x265e5a51)
    b = _gg(b, c, d, a, x[0], 20, 0xe9b6c7aa)
    a = _gg(a, b, c, d, x[5], 5, 0xd62f105d)
    d = _gg(d, a, b, c, x[10], 9, 0x02441453)
    c = _gg(c, d, a, b, x[15], 14, 0xd8a1e681)
    b = _gg(b, c, d, a, x[4], 20, 0xe7d3fbc8)
    a = _gg(a, b, c, d, x[9], 5, 0x21e1cde6)
    d = _gg(d, a, b, c, x[14], 9, 0xc33707d6)
    c = _gg(c, d, a, b, x[3], 14, 0xf4d50d87)
    b = _gg(b, c, d, a, x[8], 20, 0x455a14ed)
    a = _gg(a, b, c, d, x[13], 5, 0xa9e3e905)
    d = _gg(d, a, b, c, x[2], 9, 0xfcefa3f8)
    c = _gg(c, d, a, b, x[7], 14, 0x676f02d9)
    b = _gg(b, c, d, a, x[12], 20, 0x8d2a4c8a)
    # Round 3
    a = _hh(a, b, c, d, x[5], 4, 0xfffa3942)
    d = _hh(d, a, b, c, x[8], 11, 0x8771f681)
    c = _hh(c, d, a, b, x[11], 16, 0x6d9d6122)
    b = _hh(b, c, d, a, x[14], 23, 0xfde5380c)
    a = _hh(a, b, c, d, x[1], 4, 0xa4beea44)
    d = _hh(d, a, b, c, x[4], 11, 0x4bdecfa9)
    c = _hh(c, d, a, b, x[7], 16, 0xf6bb4b60)
    b = _hh(b, c, d, a, x[10], 23, 0xbebfbc70)
    a = _hh(a, b, c, d, x[13], 4, 0x289b7ec6)
    d = _hh(d, a, b, c, x[0], 11, 0xeaa127fa)
    c = _hh(c, d, a, b, x[3], 16, 0xd4ef3085)
    b = _hh(b, c, d, a, x[6], 23, 0x04881d05)
    a = _hh(a, b, c, d, x[9], 4, 0xd9d4d039)
    d = _hh(d, a, b, c, x[12], 11, 0xe6db99e5)
    c = _hh(c, d, a, b, x[15], 16, 0x1fa27cf8)
    b = _hh(b, c, d, a, x[2], 23, 0xc4ac5665)
    # Round 4
    a = _ii(a, b, c, d, x[0], 6, 0xf4292244)
    d = _ii(d, a, b, c, x[7], 10, 0x432aff97)
    c = _ii(c, d, a, b, x[14], 15, 0xab9423a7)
    b = _ii(b, c, d, a, x[5], 21, 0xfc93a039)
    a = _ii(a, b, c, d, x[12], 6, 0x655b59c3)
    d = _ii(d, a, b, c, x[3], 10, 0x8f0ccc92)
    c = _ii(c, d, a, b, x[10], 15, 0xffeff47d)
    b = _ii(b, c, d, a, x[1], 21, 0x85845dd1)
    a = _ii(a, b, c, d, x[8], 6, 0x6fa87e4f)
    d = _ii(d, a, b, c, x[15], 10, 0xfe2ce6e0)
    c = _ii(c, d, a, b, x[6], 15, 0xa3014314)
    b = _ii(b, c, d, a, x[13], 21, 0x4e0811a1)
    a = _ii(a, b, c, d, x[4], 6, 0xf7537e82)
    d = _ii(d, a, b, c, x[11], 10, 0xbd3af235)
    c = _ii(c, d, a, b, x[2], 15, 0x2ad7d2bb)
    b = _ii(b, c, d, a, x[9], 21, 0xeb86d391)
    st[0] += a
    st[1] += b
    st[2] += c
    st[3] += d


cdef inline void _md5_init(Md5* m) noexcept nogil:
    m.state[0] = 0x67452301
    m.state[1] = 0xefcdab89
    m.state[2] = 0x98badcfe
    m.state[3] = 0x10325476
    m.count = 0


cdef void _md5_update(Md5* m, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t used = <Py_ssize_t>(m.count & 63)
    cdef Py_ssize_t room
    if n <= 0:
        return
    m.count += <uint64_t>n
    if used:
        room = 64 - used
        if n < room:
            memcpy(m.block + used, p, n)
            return
        memcpy(m.block + used, p, room)
        _md5_block(m.state, m.block)
        p += room
        n -= room
    while n >= 64:
        _md5_block(m.state, p)
        p += 64
        n -= 64
    if n:
        memcpy(m.block, p, n)


cdef void _md5_final(Md5* m, uint8_t* out) noexcept nogil:
    """Pad (a 1 bit, zeros, the 64-bit little-endian bit count: RFC 1321 §3.1-3.2) and emit 16 octets."""
    cdef uint64_t bits = m.count << 3
    cdef Py_ssize_t used = <Py_ssize_t>(m.count & 63)
    cdef int i
    m.block[used] = 0x80
    used += 1
    if used > 56:
        memset(m.block + used, 0, 64 - used)
        _md5_block(m.state, m.block)
        used = 0
    memset(m.block + used, 0, 56 - used)
    for i in range(8):
        m.block[56 + i] = <uint8_t>(bits >> (8 * i))
    _md5_block(m.state, m.block)
    for i in range(4):
        out[4 * i] = <uint8_t>m.state[i]
        out[4 * i + 1] = <uint8_t>(m.state[i] >> 8)
        out[4 * i + 2] = <uint8_t>(m.state[i] >> 16)
        out[4 * i + 3] = <uint8_t>(m.state[i] >> 24)


cdef void _hmac_init(HmacMd5* h, const uint8_t* key, Py_ssize_t n) noexcept nogil:
    """Key the inner and outer hashes (RFC 2104 §2: keys longer than 64 octets are hashed first)."""
    cdef uint8_t k[64]
    cdef uint8_t pad[64]
    cdef Md5 m
    cdef int i
    memset(k, 0, 64)
    if n > 64:
        _md5_init(&m)
        _md5_update(&m, key, n)
        _md5_final(&m, k)
    elif n > 0:
        memcpy(k, key, n)
    for i in range(64):
        pad[i] = k[i] ^ 0x36
    _md5_init(&h.inner)
    _md5_update(&h.inner, pad, 64)
    for i in range(64):
        pad[i] = k[i] ^ 0x5c
    _md5_init(&h.outer)
    _md5_update(&h.outer, pad, 64)


cdef void _hmac_final(HmacMd5* h, uint8_t* out) noexcept nogil:
    cdef uint8_t inner[16]
    _md5_final(&h.inner, inner)
    _md5_update(&h.outer, inner, 16)
    _md5_final(&h.outer, out)


# The keyed HMAC state of the last secret seen. A batch usually carries many packets of one client,
# and keying costs two of the five or so MD5 blocks a Message-Authenticator takes. Every caller holds
# the GIL from start to end, so a plain module global is safe (this module does not claim to run
# without the GIL).
cdef HmacMd5 _hmac_keyed
cdef bytes _hmac_key = None


cdef inline void _hmac_start(HmacMd5* h, bytes secret):
    global _hmac_key
    if secret is not _hmac_key and (_hmac_key is None or secret != _hmac_key):
        _hmac_init(&_hmac_keyed, <const uint8_t*>PyBytes_AS_STRING(secret), PyBytes_GET_SIZE(secret))
        _hmac_key = secret
    h[0] = _hmac_keyed
