# RADIUS on the wire: included by bench/_loadgen.pyx (one module, one namespace). The attribute
# writers the Engine builds requests with, User-Password hiding, the Accounting-Request
# authenticator, and the check every reply must pass before it counts as an answer, all on the MD5
# and HMAC-MD5 of _lg_primitives.h (md5 and hmac_md5 expose them to the tests).


cdef extern from "_lg_primitives.h":
    ctypedef struct lg_md5:
        pass
    ctypedef struct lg_hmac:
        pass
    void lg_md5_init(lg_md5* m) nogil
    void lg_md5_update(lg_md5* m, const uint8_t* p, size_t n) nogil
    void lg_md5_final(lg_md5* m, uint8_t* out) nogil
    void lg_hmac_key(lg_hmac* h, const uint8_t* key, size_t n) nogil
    void lg_hmac_run(const lg_hmac* h, const uint8_t* p, size_t n, uint8_t* out) nogil


# What _check_reply finds.
cdef enum:
    REPLY_OK = 0            # it answers the request, and is well formed
    REPLY_STRAY = 1         # its Response Authenticator does not match: it does not answer the request
    REPLY_BAD = 2           # it answers the request, but its attributes or Message-Authenticator are wrong


cdef inline uint32_t _mix32(uint32_t h) noexcept nogil:
    """MurmurHash3's finalizer: every input bit flips about half the output bits."""
    h ^= h >> 16
    h *= <uint32_t>0x85EBCA6B
    h ^= h >> 13
    h *= <uint32_t>0xC2B2AE35
    h ^= h >> 16
    return h


cdef inline void _put16(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void _put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline uint8_t* _attr(uint8_t* p, uint8_t atype, const uint8_t* value, Py_ssize_t n) noexcept nogil:
    p[0] = atype
    p[1] = <uint8_t>(n + 2)
    memcpy(p + 2, value, n)
    return p + 2 + n


cdef inline uint8_t* _attr32(uint8_t* p, uint8_t atype, uint32_t value) noexcept nogil:
    p[0] = atype
    p[1] = 6
    _put32(p + 2, value)
    return p + 6


cdef inline uint8_t* _conf_vsa(uint8_t* p, const char* conf, int n) noexcept nogil:
    # Vendor-Specific (26), Cisco (9), h323-conf-id (24), RFC 2865 §5.26 suggested format.
    p[0] = 26
    p[1] = <uint8_t>(n + 8)
    _put32(p + 2, 9)
    p[6] = 24
    p[7] = <uint8_t>(n + 2)
    memcpy(p + 8, conf, n)
    return p + 8 + n


cdef uint8_t* _user_password(uint8_t* p, const uint8_t* pin, Py_ssize_t npin, const uint8_t* key,
                             Py_ssize_t klen, const uint8_t* auth) noexcept nogil:
    """Write `pin` at `p` as a User-Password hidden under the Request Authenticator `auth`; returns the
    position after it."""
    # User-Password, RFC 2865 §5.2: b1 = MD5(S + RA), c1 = p1 xor b1, b2 = MD5(S + c1), ...
    cdef Py_ssize_t hidden = (npin + 15) & ~15
    cdef Py_ssize_t i, j
    cdef uint8_t* pw = p + 2
    cdef const uint8_t* prev = auth
    cdef lg_md5 m
    cdef uint8_t block[16]
    p[0] = 2
    p[1] = <uint8_t>(hidden + 2)
    for i in range(0, hidden, 16):
        lg_md5_init(&m)
        lg_md5_update(&m, key, klen)
        lg_md5_update(&m, prev, 16)
        lg_md5_final(&m, block)
        for j in range(16):
            pw[i + j] = block[j] ^ (pin[i + j] if i + j < npin else 0)
        prev = pw + i
    return p + 2 + hidden


cdef inline void _acct_authenticator(uint8_t* out, Py_ssize_t length, const uint8_t* key,
                                     Py_ssize_t klen) noexcept nogil:
    """Fill in the Request Authenticator of the Accounting-Request of `length` octets at `out`."""
    cdef lg_md5 m
    # RFC 2866 §3: MD5(Code + Identifier + Length + 16 zero octets + attributes + secret)
    lg_md5_init(&m)
    lg_md5_update(&m, out, length)
    lg_md5_update(&m, key, klen)
    lg_md5_final(&m, out + 4)


cdef int _check_reply(const uint8_t* pkt, Py_ssize_t length, const uint8_t* auth, const uint8_t* key,
                      Py_ssize_t klen, const lg_hmac* hmac, uint8_t* scratch, bint* credit) noexcept nogil:
    """Verify the reply of `length` octets at `pkt` against the request whose Request Authenticator is
    `auth`: REPLY_OK, REPLY_STRAY or REPLY_BAD. `scratch` (RX_SLOT octets) takes a copy while the
    Message-Authenticator is checked; `credit[0]` is set when the reply carries a credit amount."""
    cdef Py_ssize_t pos, ma = -1, alen
    cdef lg_md5 m
    cdef uint8_t digest[16]
    # Response Authenticator: MD5(Code + Identifier + Length + Request Authenticator + attributes + secret)
    lg_md5_init(&m)
    lg_md5_update(&m, pkt, 4)
    lg_md5_update(&m, auth, 16)
    lg_md5_update(&m, pkt + 20, length - 20)
    lg_md5_update(&m, key, klen)
    lg_md5_final(&m, digest)
    if memcmp(digest, pkt + 4, 16) != 0:
        return REPLY_STRAY
    pos = 20
    while pos < length:
        if pos + 2 > length:
            break
        alen = pkt[pos + 1]
        if alen < 2 or pos + alen > length:
            break
        if pkt[pos] == 80 and alen == 18 and ma < 0:
            ma = pos + 2
        elif (pkt[pos] == 26 and alen >= 8 and pkt[pos + 2] == 0 and pkt[pos + 3] == 0
              and pkt[pos + 4] == 0 and pkt[pos + 5] == 9 and pkt[pos + 6] == 101):
            credit[0] = True    # Cisco h323-credit-amount
        pos += alen
    if pos != length:
        return REPLY_BAD
    if ma >= 0:
        memcpy(scratch, pkt, length)
        memcpy(scratch + 4, auth, 16)
        memset(scratch + ma, 0, 16)
        lg_hmac_run(hmac, scratch, length, digest)
        if memcmp(digest, pkt + ma, 16) != 0:
            return REPLY_BAD
    return REPLY_OK


def md5(data) -> bytes:
    """MD5 of `data` with this module's implementation (checked against hashlib by the tests)."""
    cdef bytes b = bytes(data)
    cdef lg_md5 m
    cdef uint8_t out[16]
    lg_md5_init(&m)
    lg_md5_update(&m, <const uint8_t*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    lg_md5_final(&m, out)
    return PyBytes_FromStringAndSize(<char*>out, 16)


def hmac_md5(key, data) -> bytes:
    """HMAC-MD5(key, data) with this module's implementation."""
    cdef bytes k = bytes(key)
    cdef bytes b = bytes(data)
    cdef lg_hmac h
    cdef uint8_t out[16]
    lg_hmac_key(&h, <const uint8_t*>PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
    lg_hmac_run(&h, <const uint8_t*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), out)
    return PyBytes_FromStringAndSize(<char*>out, 16)
