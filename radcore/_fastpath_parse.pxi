# Included by radcore/_fastpath.pyx (one module, one namespace): a request datagram parsed and
# checked into one flat Request, alone or a batch at a time.

# =============================================================================================
# Server side: one request in, one flat Request out


cdef Request _parse_request(bytes data, bytes secret, bint require_ma):
    cdef const uint8_t* base = _ptr(data)
    cdef Py_ssize_t length = _check_header(base, PyBytes_GET_SIZE(data))
    cdef int code = base[0]
    if code != CODE_ACCESS_REQUEST and code != CODE_ACCOUNTING_REQUEST and code != CODE_STATUS_SERVER:
        raise PacketError(f"code {code} is not a request a server accepts", "bad_code")

    cdef Span user_name, hidden, chap_password, chap_challenge, nas_ip, nas_identifier
    cdef Span called, calling, session_id, conf_id, call_origin, redirect_number
    user_name.p = hidden.p = chap_password.p = chap_challenge.p = nas_ip.p = nas_identifier.p = NULL
    called.p = calling.p = session_id.p = conf_id.p = call_origin.p = redirect_number.p = NULL
    user_name.n = hidden.n = chap_password.n = chap_challenge.n = nas_ip.n = nas_identifier.n = 0
    called.n = calling.n = session_id.n = conf_id.n = call_origin.n = redirect_number.n = 0
    cdef long long status_type = 0, session_time = -1, delay_time = 0
    cdef long long terminate_cause = 0, event_timestamp = 0
    cdef Py_ssize_t ma_offset = -1, first_proxy = -1, proxy_count = 0

    cdef Cursor cur
    cdef Cursor sub_cur
    cdef const uint8_t* hdr
    cdef const uint8_t* val
    cdef const uint8_t* sub
    cdef Py_ssize_t vlen
    cdef int atype
    cdef uint32_t vendor
    cur.buf = base + HEADER_LENGTH
    cur.len = length - HEADER_LENGTH
    while cur.len > 0:
        hdr = _take(&cur, 2)
        atype = hdr[0]
        if hdr[1] < 2:
            raise PacketError(f"attribute {atype} at offset {hdr - base} has length {hdr[1]} < 2",
                              "bad_attribute")
        vlen = hdr[1] - 2
        val = _take(&cur, vlen)
        if atype == ATTR_MESSAGE_AUTHENTICATOR:
            # RFC 3579 §3.2: exactly one, 16 octets.
            if vlen != AUTH_LENGTH:
                raise MessageAuthenticatorError(f"Message-Authenticator of {vlen} octets, not 16")
            if ma_offset >= 0:
                raise MessageAuthenticatorError("more than one Message-Authenticator")
            ma_offset = val - base
        elif atype == ATTR_USER_NAME:
            user_name.p = val; user_name.n = vlen
        elif atype == ATTR_USER_PASSWORD:
            hidden.p = val; hidden.n = vlen
        elif atype == ATTR_CHAP_PASSWORD:
            chap_password.p = val; chap_password.n = vlen
        elif atype == ATTR_CHAP_CHALLENGE:
            chap_challenge.p = val; chap_challenge.n = vlen
        elif atype == ATTR_NAS_IP_ADDRESS:
            if vlen != 4:
                raise PacketError(f"NAS-IP-Address of {vlen} octets, not 4", "bad_attribute")
            nas_ip.p = val; nas_ip.n = vlen
        elif atype == ATTR_NAS_IDENTIFIER:
            nas_identifier.p = val; nas_identifier.n = vlen
        elif atype == ATTR_CALLED_STATION_ID:
            called.p = val; called.n = vlen
        elif atype == ATTR_CALLING_STATION_ID:
            calling.p = val; calling.n = vlen
        elif atype == ATTR_ACCT_SESSION_ID:
            session_id.p = val; session_id.n = vlen
        elif atype == ATTR_PROXY_STATE:
            if proxy_count == 0:
                first_proxy = hdr - base
            proxy_count += 1
        elif (atype == ATTR_ACCT_STATUS_TYPE or atype == ATTR_ACCT_SESSION_TIME
              or atype == ATTR_ACCT_DELAY_TIME or atype == ATTR_ACCT_TERMINATE_CAUSE
              or atype == ATTR_EVENT_TIMESTAMP):
            if vlen != 4:
                raise PacketError(f"{dictionary.attribute_name(atype)} of {vlen} octets, not 4",
                                  "bad_attribute")
            if atype == ATTR_ACCT_STATUS_TYPE:
                status_type = _be32(val)
            elif atype == ATTR_ACCT_SESSION_TIME:
                session_time = _be32(val)
            elif atype == ATTR_ACCT_DELAY_TIME:
                delay_time = _be32(val)
            elif atype == ATTR_ACCT_TERMINATE_CAUSE:
                terminate_cause = _be32(val)
            else:
                event_timestamp = _be32(val)
        elif atype == ATTR_VENDOR_SPECIFIC and vlen > 4:
            vendor = _be32(val)
            if (vendor == VENDOR_CISCO or vendor == VENDOR_QUINTUM) and _vsa_well_formed(val, vlen):
                sub_cur.buf = val + 4
                sub_cur.len = vlen - 4
                while sub_cur.len > 0:
                    sub = _step(&sub_cur, 2)
                    if sub[0] == VSA_H323_CONF_ID:
                        conf_id.p = sub + 2; conf_id.n = sub[1] - 2
                    elif sub[0] == VSA_H323_CALL_ORIGIN:
                        call_origin.p = sub + 2; call_origin.n = sub[1] - 2
                    elif sub[0] == VSA_H323_REDIRECT_NUMBER:
                        redirect_number.p = sub + 2; redirect_number.n = sub[1] - 2
                    _step(&sub_cur, sub[1] - 2)

    cdef uint8_t expected[16]
    cdef const uint8_t* ma_auth
    if code == CODE_ACCOUNTING_REQUEST:
        # RFC 2866 §3: MD5(Code + Identifier + Length + 16 zero octets + attributes + secret).
        _packet_md5(expected, base, length, _ZEROS, AUTH_LENGTH, secret)
        if not _equal(expected, base + 4, AUTH_LENGTH):
            raise AuthenticatorError("Accounting-Request authenticator does not match the secret")
        ma_auth = _ZEROS
    else:
        ma_auth = base + 4

    if ma_offset >= 0:
        _packet_hmac(expected, base, length, ma_auth, ma_offset, secret)
        if not _equal(expected, base + ma_offset, AUTH_LENGTH):
            raise MessageAuthenticatorError("Message-Authenticator does not match the secret")
    elif code == CODE_STATUS_SERVER:
        raise MessageAuthenticatorError("Status-Server without Message-Authenticator",
                                        "missing_message_authenticator")
    elif code == CODE_ACCESS_REQUEST and (require_ma or proxy_count):
        raise MessageAuthenticatorError("Access-Request without Message-Authenticator",
                                        "missing_message_authenticator")

    cdef Request req = Request.__new__(Request)
    req.code = code
    req.identifier = base[1]
    req.authenticator = _bytes_at(base + 4, AUTH_LENGTH)
    req.password = (None if hidden.p == NULL
                    else _unhide(hidden.p, hidden.n, secret, base + 4, AUTH_LENGTH))
    req.user_name = _text(user_name)
    req.chap_password = None if chap_password.p == NULL else _bytes_at(chap_password.p, chap_password.n)
    if chap_challenge.p != NULL:
        req.chap_challenge = _bytes_at(chap_challenge.p, chap_challenge.n)
    elif chap_password.p != NULL:
        req.chap_challenge = req.authenticator
    else:
        req.chap_challenge = None
    cdef char quad[16]
    cdef int quad_len
    if nas_ip.p == NULL:
        req.nas_ip = ""
    else:
        quad_len = snprintf(quad, sizeof(quad), "%u.%u.%u.%u",
                            <unsigned>nas_ip.p[0], <unsigned>nas_ip.p[1], <unsigned>nas_ip.p[2],
                            <unsigned>nas_ip.p[3])
        req.nas_ip = PyUnicode_DecodeASCII(quad, quad_len, NULL)
    req.nas_identifier = _text(nas_identifier)
    req.called = _text(called)
    req.calling = _text(calling)
    req.status_type = status_type
    req.session_id = _text(session_id)
    req.session_time = session_time
    req.delay_time = delay_time
    req.terminate_cause = terminate_cause
    req.event_timestamp = event_timestamp
    req.conf_id = _h323_text(conf_id, _CONF_ID_PREFIX)
    req.call_origin = _h323_text(call_origin, _CALL_ORIGIN_PREFIX)
    req.redirect_number = _h323_text(redirect_number, _REDIRECT_NUMBER_PREFIX)
    req.proxy_states = () if proxy_count == 0 else _proxy_states(base, first_proxy, length, proxy_count)
    req.has_message_authenticator = ma_offset >= 0
    return req


cdef tuple _proxy_states(const uint8_t* base, Py_ssize_t first, Py_ssize_t length, Py_ssize_t count):
    """The Proxy-State values in wire order, from a packet the walk has already validated."""
    cdef Cursor cur
    cdef const uint8_t* hdr
    cdef const uint8_t* val
    cdef list states = []
    cur.buf = base + first
    cur.len = length - first
    while len(states) < count:
        hdr = _take(&cur, 2)
        val = _take(&cur, hdr[1] - 2)
        if hdr[0] == ATTR_PROXY_STATE:
            states.append(_bytes_at(val, hdr[1] - 2))
    return tuple(states)


def parse_request(data, secret, require_message_authenticator=True):
    """Validate and verify one request from a known client and extract its prepaid fields.

    Raises `PacketError` (structure), `AuthenticatorError` (Accounting-Request authenticator) or
    `MessageAuthenticatorError` (missing where required, wrong size, or wrong value). A
    Status-Server must carry a Message-Authenticator (RFC 5997 §3); so must an Access-Request that
    carries Proxy-State (the BlastRADIUS mitigation), whatever the client's setting.
    """
    return _parse_request(_bytes_of(data), _bytes_of(secret), bool(require_message_authenticator))


def parse_batch(items):
    """`parse_request` over a batch of (datagram, secret, require_message_authenticator).

    A bad datagram yields its `PacketError` in place instead of raising, so one bad packet never
    costs the rest of the batch.
    """
    cdef list out = []
    for data, secret, require in items:
        try:
            out.append(_parse_request(_bytes_of(data), _bytes_of(secret), bool(require)))
        except PacketError as exc:
            out.append(exc)
    return out
