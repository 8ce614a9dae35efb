# Included by radcore/_fastpath.pyx (one module, one namespace): what a RADIUS client needs:
# building requests and checking replies (the tests and the load generator's oracle).

# =============================================================================================
# Client side (tests, load generator)


def encode_access_request(identifier, authenticator, attributes, secret, *, password=None,
                          message_authenticator=True, code=CODE_ACCESS_REQUEST):
    """An Access-Request (or Status-Server with `code`) with a hidden User-Password and, by default,
    a Message-Authenticator as its first attribute."""
    cdef list attrs = list(attributes)
    if password is not None:
        attrs.append((ATTR_USER_PASSWORD, hide_password(password, secret, authenticator)))
    cdef Writer w
    cdef bint with_ma = bool(message_authenticator)
    cdef Py_ssize_t start = 0 if with_ma else MA_ATTRIBUTE_LENGTH
    cdef uint8_t* p
    cdef Py_ssize_t length
    cdef HmacMd5 h
    cdef bytes key
    _w_init(&w, HEADER_LENGTH + MA_ATTRIBUTE_LENGTH)
    try:
        _w_attributes(&w, attrs)
        p = w.buf + start
        length = w.len - start
        _put_header(p, code, identifier, length, authenticator)
        if with_ma:
            p[HEADER_LENGTH] = ATTR_MESSAGE_AUTHENTICATOR
            p[HEADER_LENGTH + 1] = MA_ATTRIBUTE_LENGTH
            memset(p + HEADER_LENGTH + 2, 0, AUTH_LENGTH)
            key = _bytes_of(secret)
            _hmac_start(&h, key)
            _md5_update(&h.inner, p, length)
            _hmac_final(&h, p + HEADER_LENGTH + 2)
        return _bytes_at(p, length)
    finally:
        _w_free(&w)


def encode_accounting_request(identifier, attributes, secret):
    """An Accounting-Request with its Request Authenticator computed (RFC 2866 §3)."""
    cdef Writer w
    cdef Py_ssize_t length
    cdef bytes key
    _w_init(&w, HEADER_LENGTH)
    try:
        _w_attributes(&w, attributes)
        length = w.len
        if length > MAX_PACKET_LENGTH:
            raise ValueError(f"packet of {length} octets exceeds 4096")
        _put_header(w.buf, CODE_ACCOUNTING_REQUEST, identifier, length, _ZERO16)
        key = _bytes_of(secret)
        # The authenticator field holds zeros, so MD5(packet + secret) is the RFC 2866 §3 hash.
        _packet_md5(w.buf + 4, w.buf, length, _ZEROS, AUTH_LENGTH, key)
        return _bytes_at(w.buf, length)
    finally:
        _w_free(&w)


def decode_response(data, request_auth, secret):
    """Decode a reply and verify its Response Authenticator and, when present, Message-Authenticator."""
    cdef bytes pkt = _bytes_of(data)
    cdef Py_ssize_t offset
    decoded = _decode(pkt, &offset)
    cdef bytes auth = _bytes_of(request_auth)
    cdef bytes key = _bytes_of(secret)
    cdef const uint8_t* base = _ptr(pkt)
    cdef Py_ssize_t length = (<Py_ssize_t>base[2] << 8) | base[3]
    cdef uint8_t expected[16]
    _packet_md5(expected, base, length, _ptr(auth), PyBytes_GET_SIZE(auth), key)
    if not _equal(expected, base + 4, AUTH_LENGTH):
        raise AuthenticatorError("Response Authenticator does not match the secret")
    if offset >= 0:
        if offset + AUTH_LENGTH > length:
            # A short Message-Authenticator at the very end: the reference compares fewer than
            # 16 octets against the MAC, which never matches.
            raise MessageAuthenticatorError("reply Message-Authenticator does not match the secret")
        if PyBytes_GET_SIZE(auth) == AUTH_LENGTH:
            _packet_hmac(expected, base, length, _ptr(auth), offset, key)
            matches = _equal(expected, base + offset, AUTH_LENGTH)
        else:
            mac = _message_authenticator_slow(pkt[:length], key, auth, offset)
            matches = hmac.compare_digest(mac, pkt[offset:offset + 16])
        if not matches:
            raise MessageAuthenticatorError("reply Message-Authenticator does not match the secret")
    return decoded
