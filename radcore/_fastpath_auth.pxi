# Included by radcore/_fastpath.pyx (one module, one namespace): the RFC 2865 authenticators, User-
# Password hiding, CHAP, and the RFC 3579 Message-Authenticator.

# =============================================================================================
# Authenticators and password hiding


cdef void _md5_of(uint8_t* out, const uint8_t* a, Py_ssize_t na, const uint8_t* b, Py_ssize_t nb,
                  const uint8_t* c, Py_ssize_t nc, const uint8_t* d, Py_ssize_t nd) noexcept nogil:
    """MD5 of up to four concatenated pieces, without concatenating them."""
    cdef Md5 m
    _md5_init(&m)
    _md5_update(&m, a, na)
    _md5_update(&m, b, nb)
    _md5_update(&m, c, nc)
    _md5_update(&m, d, nd)
    _md5_final(&m, out)


cdef void _packet_md5(uint8_t* out, const uint8_t* pkt, Py_ssize_t n, const uint8_t* auth,
                      Py_ssize_t nauth, bytes secret) noexcept:
    """MD5(pkt[:4] + auth + pkt[20:] + secret): Request (RFC 2866 §3) and Response (RFC 2865 §3)
    Authenticators, with the reference's slicing for packets shorter than a header."""
    _md5_of(out, pkt, 4 if n > 4 else n, auth, nauth,
            pkt + HEADER_LENGTH, n - HEADER_LENGTH if n > HEADER_LENGTH else 0,
            _ptr(secret), PyBytes_GET_SIZE(secret))


def request_authenticator(data, secret):
    """Accounting-Request Request Authenticator: MD5(header with 16 zero octets + attributes + secret).

    RFC 2866 §3; the same construction covers Response Authenticators when `data` carries the
    Request Authenticator in place (RFC 2865 §3).
    """
    cdef bytes pkt = _bytes_of(data)
    cdef bytes key = _bytes_of(secret)
    cdef uint8_t out[16]
    _packet_md5(out, _ptr(pkt), PyBytes_GET_SIZE(pkt), _ZEROS, AUTH_LENGTH, key)
    return _bytes_at(out, 16)


def response_authenticator(data, request_auth, secret):
    """ResponseAuth = MD5(Code+ID+Length+RequestAuth+Attributes+Secret) (RFC 2865 §3)."""
    cdef bytes pkt = _bytes_of(data)
    cdef bytes auth = _bytes_of(request_auth)
    cdef bytes key = _bytes_of(secret)
    cdef uint8_t out[16]
    _packet_md5(out, _ptr(pkt), PyBytes_GET_SIZE(pkt), _ptr(auth), PyBytes_GET_SIZE(auth), key)
    return _bytes_at(out, 16)


cdef Py_ssize_t _hide(uint8_t* out, const uint8_t* pw, Py_ssize_t n, bytes secret,
                      const uint8_t* auth, Py_ssize_t nauth) noexcept:
    """RFC 2865 §5.2 hiding of n <= 128 octets into `out`; returns the hidden length."""
    cdef Py_ssize_t total = 16 if n == 0 else (n + 15) & ~15
    cdef uint8_t key[16]
    cdef Py_ssize_t i, j
    cdef const uint8_t* prev = auth
    cdef Py_ssize_t nprev = nauth
    memset(out, 0, total)
    memcpy(out, pw, n)
    for i in range(0, total, 16):
        _md5_of(key, _ptr(secret), PyBytes_GET_SIZE(secret), prev, nprev, NULL, 0, NULL, 0)
        for j in range(16):
            out[i + j] ^= key[j]
        prev = out + i
        nprev = 16
    return total


def hide_password(password, secret, authenticator):
    """User-Password hiding, RFC 2865 §5.2: pad to 16, XOR with the chained MD5 stream."""
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError("User-Password longer than 128 octets")
    cdef bytes pw = _bytes_of(password)
    cdef bytes key = _bytes_of(secret)
    cdef bytes auth = _bytes_of(authenticator)
    cdef uint8_t out[MAX_PASSWORD_LENGTH]
    cdef Py_ssize_t n = _hide(out, _ptr(pw), PyBytes_GET_SIZE(pw), key, _ptr(auth), PyBytes_GET_SIZE(auth))
    return _bytes_at(out, n)


cdef bytes _unhide(const uint8_t* hidden, Py_ssize_t n, bytes secret, const uint8_t* auth,
                   Py_ssize_t nauth):
    """Reverse `_hide`; the trailing NUL padding is removed (RFC 2865 §5.2)."""
    cdef uint8_t out[MAX_PASSWORD_LENGTH]
    cdef uint8_t key[16]
    cdef Py_ssize_t i, j
    cdef const uint8_t* prev = auth
    cdef Py_ssize_t nprev = nauth
    if n == 0 or n % 16 or n > MAX_PASSWORD_LENGTH:
        raise PacketError(f"User-Password of {n} octets is not 16..128 in steps of 16", "bad_password")
    for i in range(0, n, 16):
        _md5_of(key, _ptr(secret), PyBytes_GET_SIZE(secret), prev, nprev, NULL, 0, NULL, 0)
        for j in range(16):
            out[i + j] = hidden[i + j] ^ key[j]
        prev = hidden + i
        nprev = 16
    while n > 0 and out[n - 1] == 0:
        n -= 1
    return _bytes_at(out, n)


def unhide_password(hidden, secret, authenticator):
    """Reverse `hide_password`; the trailing NUL padding is removed (RFC 2865 §5.2)."""
    cdef bytes h = _bytes_of(hidden)
    cdef bytes key = _bytes_of(secret)
    cdef bytes auth = _bytes_of(authenticator)
    return _unhide(_ptr(h), PyBytes_GET_SIZE(h), key, _ptr(auth), PyBytes_GET_SIZE(auth))


def chap_matches(chap_password, challenge, password):
    """CHAP check, RFC 2865 §2.2 / RFC 1994: MD5(CHAP ident + password + challenge) == response."""
    cdef bytes chap = _bytes_of(chap_password)
    cdef bytes chal
    cdef bytes pw
    cdef uint8_t expected[16]
    if PyBytes_GET_SIZE(chap) != 17:
        return False
    pw = _bytes_of(password)
    chal = _bytes_of(challenge)
    _md5_of(expected, _ptr(chap), 1, _ptr(pw), PyBytes_GET_SIZE(pw), _ptr(chal), PyBytes_GET_SIZE(chal),
            NULL, 0)
    return bool(_equal(expected, _ptr(chap) + 1, 16))


cdef void _packet_hmac(uint8_t* out, const uint8_t* pkt, Py_ssize_t n, const uint8_t* auth,
                       Py_ssize_t offset, bytes secret):
    """HMAC-MD5 over pkt[:4] + auth + pkt[20:offset] + 16 zeros + pkt[offset+16:n] (RFC 3579 §3.2).

    Requires 20 <= offset and offset + 16 <= n; `auth` is 16 octets.
    """
    cdef HmacMd5 h
    _hmac_start(&h, secret)
    _md5_update(&h.inner, pkt, 4)
    _md5_update(&h.inner, auth, AUTH_LENGTH)
    _md5_update(&h.inner, pkt + HEADER_LENGTH, offset - HEADER_LENGTH)
    _md5_update(&h.inner, _ZEROS, AUTH_LENGTH)
    _md5_update(&h.inner, pkt + offset + AUTH_LENGTH, n - offset - AUTH_LENGTH)
    _hmac_final(&h, out)


def _message_authenticator_slow(data, secret, authenticator, offset):
    """The reference's computation, literally, for arguments the C path does not take."""
    buf = bytearray(data)
    buf[4:20] = authenticator
    buf[offset:offset + 16] = _ZERO16
    return hmac.new(secret, bytes(buf), hashlib.md5).digest()


def message_authenticator(data, secret, authenticator, offset):
    """HMAC-MD5 over the packet with the Message-Authenticator value zeroed (RFC 3579 §3.2).

    `offset` is where the 16-octet value starts; `authenticator` is what the header's
    authenticator field holds during the computation (request: itself, or zeros for accounting;
    response: the Request Authenticator).
    """
    cdef long long off
    cdef bytes pkt, auth, key
    cdef uint8_t out[16]
    if (PyBytes_CheckExact(data) and PyBytes_CheckExact(authenticator) and PyBytes_CheckExact(secret)
            and PyBytes_GET_SIZE(authenticator) == AUTH_LENGTH
            and _small_int(offset, HEADER_LENGTH, PyBytes_GET_SIZE(data) - AUTH_LENGTH, &off)):
        pkt = <bytes>data
        auth = <bytes>authenticator
        key = <bytes>secret
        _packet_hmac(out, _ptr(pkt), PyBytes_GET_SIZE(pkt), _ptr(auth), off, key)
        return _bytes_at(out, 16)
    return _message_authenticator_slow(data, secret, authenticator, offset)
