# SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) for the card-authentication lane, included by
# radcore/_cardauth.pyx. The PIN digest is HMAC-SHA256(pepper, PIN) (radcore.keys.KeyRing.pin_digest);
# through hashlib each one costs an OpenSSL algorithm fetch, a context allocation and a cleanse, several
# times the two compression blocks the digest itself needs. Keyed once (the ipad and opad states are
# kept), a PIN digest here is exactly those two blocks. tests/test_lane.py checks it against hashlib.

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset


cdef struct Sha256:
    uint32_t state[8]               # H0..H7 (FIPS 180-4 §5.3.3, §6.2)
    uint64_t count                  # octets fed so far
    uint8_t block[64]               # octets waiting for a full block


cdef struct HmacSha256:
    Sha256 inner                    # already fed key XOR ipad
    Sha256 outer                    # already fed key XOR opad


cdef uint32_t[64] _K256 = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]


cdef inline uint32_t _ror(uint32_t x, int n) noexcept nogil:
    return (x >> n) | (x << (32 - n))


cdef void _sha256_block(uint32_t* st, const uint8_t* p) noexcept nogil:
    """One compression of a 64-octet block (FIPS 180-4 §6.2.2)."""
    cdef uint32_t w[64]
    cdef uint32_t a, b, c, d, e, f, g, h, t1, t2, s0, s1
    cdef int i
    for i in range(16):
        w[i] = ((<uint32_t>p[4 * i] << 24) | (<uint32_t>p[4 * i + 1] << 16)
                | (<uint32_t>p[4 * i + 2] << 8) | <uint32_t>p[4 * i + 3])
    for i in range(16, 64):
        s0 = _ror(w[i - 15], 7) ^ _ror(w[i - 15], 18) ^ (w[i - 15] >> 3)
        s1 = _ror(w[i - 2], 17) ^ _ror(w[i - 2], 19) ^ (w[i - 2] >> 10)
        w[i] = w[i - 16] + s0 + w[i - 7] + s1
    a = st[0]; b = st[1]; c = st[2]; d = st[3]; e = st[4]; f = st[5]; g = st[6]; h = st[7]
    for i in range(64):
        t1 = h + (_ror(e, 6) ^ _ror(e, 11) ^ _ror(e, 25)) + ((e & f) ^ (~e & g)) + _K256[i] + w[i]
        t2 = (_ror(a, 2) ^ _ror(a, 13) ^ _ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2
    st[0] += a; st[1] += b; st[2] += c; st[3] += d; st[4] += e; st[5] += f; st[6] += g; st[7] += h


cdef void _sha256_init(Sha256* s) noexcept nogil:
    s.state[0] = 0x6a09e667; s.state[1] = 0xbb67ae85; s.state[2] = 0x3c6ef372; s.state[3] = 0xa54ff53a
    s.state[4] = 0x510e527f; s.state[5] = 0x9b05688c; s.state[6] = 0x1f83d9ab; s.state[7] = 0x5be0cd19
    s.count = 0


cdef void _sha256_update(Sha256* s, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t used = <Py_ssize_t>(s.count & 63), room
    if n <= 0:
        return
    s.count += <uint64_t>n
    if used:
        room = 64 - used
        if n < room:
            memcpy(s.block + used, p, n)
            return
        memcpy(s.block + used, p, room)
        _sha256_block(s.state, s.block)
        p += room
        n -= room
    while n >= 64:
        _sha256_block(s.state, p)
        p += 64
        n -= 64
    if n:
        memcpy(s.block, p, n)


cdef void _sha256_final(Sha256* s, uint8_t* out) noexcept nogil:
    """Pad (a 1 bit, zeros, the 64-bit big-endian bit count: FIPS 180-4 §5.1.1) and emit 32 octets."""
    cdef uint64_t bits = s.count << 3
    cdef Py_ssize_t used = <Py_ssize_t>(s.count & 63)
    cdef int i
    s.block[used] = 0x80
    used += 1
    if used > 56:
        memset(s.block + used, 0, 64 - used)
        _sha256_block(s.state, s.block)
        used = 0
    memset(s.block + used, 0, 56 - used)
    for i in range(8):
        s.block[63 - i] = <uint8_t>(bits >> (8 * i))
    _sha256_block(s.state, s.block)
    for i in range(8):
        out[4 * i] = <uint8_t>(s.state[i] >> 24)
        out[4 * i + 1] = <uint8_t>(s.state[i] >> 16)
        out[4 * i + 2] = <uint8_t>(s.state[i] >> 8)
        out[4 * i + 3] = <uint8_t>s.state[i]


cdef void _hmac_sha256_key(HmacSha256* h, const uint8_t* key, Py_ssize_t n) noexcept nogil:
    """Key both halves once (RFC 2104 §2; keys over 64 octets are hashed first)."""
    cdef uint8_t k[64]
    cdef uint8_t pad[64]
    cdef Sha256 s
    cdef int i
    memset(k, 0, 64)
    if n > 64:
        _sha256_init(&s)
        _sha256_update(&s, key, n)
        _sha256_final(&s, k)
    elif n > 0:
        memcpy(k, key, n)
    for i in range(64):
        pad[i] = k[i] ^ 0x36
    _sha256_init(&h.inner)
    _sha256_update(&h.inner, pad, 64)
    for i in range(64):
        pad[i] = k[i] ^ 0x5c
    _sha256_init(&h.outer)
    _sha256_update(&h.outer, pad, 64)


cdef void _hmac_sha256(const HmacSha256* keyed, const uint8_t* msg, Py_ssize_t n, uint8_t* out) noexcept nogil:
    """HMAC-SHA256 of `msg` under the key `keyed` was prepared with; 32 octets into `out`."""
    cdef HmacSha256 h = keyed[0]
    cdef uint8_t inner[32]
    _sha256_update(&h.inner, msg, n)
    _sha256_final(&h.inner, inner)
    _sha256_update(&h.outer, inner, 32)
    _sha256_final(&h.outer, out)
