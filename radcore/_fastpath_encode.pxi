# Included by radcore/_fastpath.pyx (one module, one namespace): writing packets, and the
# server's replies signed over their requests.

# =============================================================================================
# Encoding


cdef inline void _w_init(Writer* w, Py_ssize_t reserve) noexcept nogil:
    """Start empty but for `reserve` octets left in front for a header (and Message-Authenticator)."""
    w.buf = w.local
    w.cap = WRITER_LOCAL
    w.len = reserve


cdef inline void _w_free(Writer* w) noexcept:
    if w.buf != w.local:
        PyMem_Free(w.buf)
        w.buf = w.local


cdef inline uint8_t* _w_grow(Writer* w, Py_ssize_t n) except NULL:
    """Room for `n` more octets; returns where they go and counts them as written."""
    cdef uint8_t* p
    if w.len + n > w.cap:
        _w_enlarge(w, n)
    p = w.buf + w.len
    w.len += n
    return p


cdef int _w_enlarge(Writer* w, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap = w.cap * 2
    cdef uint8_t* bigger
    while cap < w.len + n:
        cap *= 2
    bigger = <uint8_t*>PyMem_Malloc(cap)
    if bigger == NULL:
        raise MemoryError()
    memcpy(bigger, w.buf, w.len)
    _w_free(w)
    w.buf = bigger
    w.cap = cap
    return 0


cdef int _w_bytes(Writer* w, bytes b) except -1:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(_w_grow(w, n), PyBytes_AS_STRING(b), n)
    return 0


cdef bytes _attribute_slow(key, value):
    """One attribute exactly as the reference encodes it, for keys and values off the fast path."""
    if len(value) > 253 or (key > 0xFF and len(value) > 247):
        raise ValueError(f"value of {dictionary.attribute_name(key)} is {len(value)} octets, too long")
    out = bytearray()
    if key > 0xFF:
        vendor, vtype = key >> 8, key & 0xFF
        out += bytes((ATTR_VENDOR_SPECIFIC, len(value) + 8))
        out += _VSA_HEADER.pack(vendor, vtype, len(value) + 2)
    else:
        if key < 1:
            raise ValueError(f"attribute type {key} out of range")
        out += bytes((key, len(value) + 2))
    out += value
    return bytes(out)


cdef int _w_attributes(Writer* w, object attributes) except -1:
    """Append attributes in the wire form of `encode_attributes`."""
    cdef object key, value
    cdef long long k
    cdef Py_ssize_t n
    cdef uint8_t* p
    cdef uint32_t vendor
    for item in attributes:
        if PyTuple_CheckExact(item) and PyTuple_GET_SIZE(item) == 2:
            key = (<tuple>item)[0]
            value = (<tuple>item)[1]
        else:
            key, value = item
        # Fast path: an int key of a standard attribute (1..255) or of a vendor with a 32-bit id.
        if PyBytes_CheckExact(value) and _small_int(key, 1, 0xFFFFFFFFFF, &k):
            n = PyBytes_GET_SIZE(value)
            if k <= 0xFF:
                if n <= 253:
                    p = _w_grow(w, n + 2)
                    p[0] = <uint8_t>k
                    p[1] = <uint8_t>(n + 2)
                    memcpy(p + 2, PyBytes_AS_STRING(value), n)
                    continue
            elif n <= 247:
                # RFC 2865 §5.26: Type 26, Length, Vendor-Id, Vendor type, Vendor length, value.
                vendor = <uint32_t>(k >> 8)
                p = _w_grow(w, n + 8)
                p[0] = ATTR_VENDOR_SPECIFIC
                p[1] = <uint8_t>(n + 8)
                p[2] = <uint8_t>(vendor >> 24)
                p[3] = <uint8_t>(vendor >> 16)
                p[4] = <uint8_t>(vendor >> 8)
                p[5] = <uint8_t>vendor
                p[6] = <uint8_t>(k & 0xFF)
                p[7] = <uint8_t>(n + 2)
                memcpy(p + 8, PyBytes_AS_STRING(value), n)
                continue
        _w_bytes(w, _attribute_slow(key, value))
    return 0


cdef int _put_header(uint8_t* p, object code, object identifier, Py_ssize_t length,
                     object authenticator) except -1:
    """Write the 20-octet header as `struct.pack("!BBH16s", ...)` would (short authenticators are
    padded with zeros, long ones cut), raising what struct raises for values it refuses."""
    cdef long long c, i
    cdef Py_ssize_t n
    if (PyBytes_CheckExact(authenticator) and length <= 0xFFFF
            and _small_int(code, 0, 255, &c) and _small_int(identifier, 0, 255, &i)):
        p[0] = <uint8_t>c
        p[1] = <uint8_t>i
        p[2] = <uint8_t>(length >> 8)
        p[3] = <uint8_t>length
        n = PyBytes_GET_SIZE(authenticator)
        if n > AUTH_LENGTH:
            n = AUTH_LENGTH
        memcpy(p + 4, PyBytes_AS_STRING(authenticator), n)
        memset(p + 4 + n, 0, AUTH_LENGTH - n)
        return 0
    packed = _HEADER.pack(code, identifier, length, authenticator)
    memcpy(p, PyBytes_AS_STRING(packed), HEADER_LENGTH)
    return 0


def encode_attributes(attributes):
    """Wire form of attributes; vendor keys become Vendor-Specific (26) with one sub-attribute each."""
    cdef Writer w
    _w_init(&w, 0)
    try:
        _w_attributes(&w, attributes)
        return _bytes_at(w.buf, w.len)
    finally:
        _w_free(&w)


def encode(code, identifier, authenticator, attributes):
    """Raw packet from its parts; no authenticator is computed."""
    cdef Writer w
    cdef Py_ssize_t length
    _w_init(&w, HEADER_LENGTH)
    try:
        _w_attributes(&w, attributes)
        length = w.len
        if length > MAX_PACKET_LENGTH:
            raise ValueError(f"packet of {length} octets exceeds 4096")
        _put_header(w.buf, code, identifier, length, authenticator)
        return _bytes_at(w.buf, length)
    finally:
        _w_free(&w)


cdef bytes _sign(Writer* w, object code, object identifier, object request_auth, bytes secret,
                 bint with_ma):
    """Finish a reply written after a 38-octet reserve: header, optional Message-Authenticator as the
    first attribute (RFC 3579 §3.2, HMAC over the packet with the Request Authenticator in place),
    then the Response Authenticator over all of it (RFC 2865 §3)."""
    cdef Py_ssize_t start = 0 if with_ma else MA_ATTRIBUTE_LENGTH
    cdef uint8_t* p = w.buf + start
    cdef Py_ssize_t length = w.len - start
    cdef HmacMd5 h
    cdef Md5 m
    if length > MAX_PACKET_LENGTH:
        raise ValueError(f"packet of {length} octets exceeds 4096")
    _put_header(p, code, identifier, length, request_auth)
    if with_ma:
        p[HEADER_LENGTH] = ATTR_MESSAGE_AUTHENTICATOR
        p[HEADER_LENGTH + 1] = MA_ATTRIBUTE_LENGTH
        memset(p + HEADER_LENGTH + 2, 0, AUTH_LENGTH)
        _hmac_start(&h, secret)
        _md5_update(&h.inner, p, length)
        _hmac_final(&h, p + HEADER_LENGTH + 2)
    _md5_init(&m)
    _md5_update(&m, p, length)
    _md5_update(&m, _ptr(secret), PyBytes_GET_SIZE(secret))
    _md5_final(&m, p + 4)
    return _bytes_at(p, length)


cdef int _w_proxy_states(Writer* w, object proxy_states) except -1:
    """Proxy-State echoed unchanged and in order, after the reply's own attributes (RFC 2865 §5.33)."""
    cdef Py_ssize_t n
    cdef uint8_t* p
    for state in proxy_states:
        if PyBytes_CheckExact(state) and PyBytes_GET_SIZE(state) <= 253:
            n = PyBytes_GET_SIZE(state)
            p = _w_grow(w, n + 2)
            p[0] = ATTR_PROXY_STATE
            p[1] = <uint8_t>(n + 2)
            memcpy(p + 2, PyBytes_AS_STRING(state), n)
        else:
            _w_bytes(w, bytes(bytes((ATTR_PROXY_STATE, len(state) + 2)) + state))
    return 0


cdef bytes _encode_response(object request, object code, object attributes, bytes secret):
    cdef Writer w
    cdef Request req = None
    cdef long long c
    cdef bint with_ma
    _w_init(&w, HEADER_LENGTH + MA_ATTRIBUTE_LENGTH)
    try:
        _w_attributes(&w, attributes)
        if type(request) is Request:
            req = <Request>request
            _w_proxy_states(&w, req.proxy_states)
        else:
            _w_proxy_states(&w, request.proxy_states)
        # Message-Authenticator on every Access-* reply and on any answer to Status-Server.
        if _small_int(code, 0, 255, &c):
            with_ma = c == CODE_ACCESS_ACCEPT or c == CODE_ACCESS_REJECT or c == CODE_ACCESS_CHALLENGE
        else:
            with_ma = code in _MA_REPLY_CODES
        if req is not None:
            with_ma = with_ma or req.code == CODE_STATUS_SERVER
            return _sign(&w, code, req.identifier, req.authenticator, secret, with_ma)
        with_ma = with_ma or bool(request.code == CODE_STATUS_SERVER)
        return _sign(&w, code, request.identifier, request.authenticator, secret, with_ma)
    finally:
        _w_free(&w)


def encode_response(request, code, attributes, secret):
    """Reply to `request`: Message-Authenticator first on Access-* replies and on any answer to a
    Status-Server (RFC 3579 §3.2, RFC 5997 §3), Proxy-State echoed last, Response Authenticator set.

    `request` is a `Request` of either implementation (or anything with the same fields).
    """
    return _encode_response(request, code, attributes, _bytes_of(secret))


def encode_responses(items):
    """`encode_response` over a batch of (request, code, attributes, secret)."""
    cdef list out = []
    for request, code, attributes, secret in items:
        out.append(_encode_response(request, code, attributes, _bytes_of(secret)))
    return out
