# Included by radcore/_acctlane.pyx: an Accounting-Request read in C into the fields settlement needs,
# and the h323 VSA reader number authorization shares.

# The fields of an Accounting-Request the settlement reads (radcore.packet.Request's).
cdef struct Acct:
    Span user
    Span nas_identifier
    Span called
    Span session_id
    Span conf_id
    const uint8_t* nas_ip       # the 4 octets, or NULL
    uint32_t status
    int64_t session_time        # -1: absent
    uint32_t delay_time
    uint32_t terminate_cause
    Py_ssize_t ma_offset        # where the Message-Authenticator's value starts; -1: none


cdef bint _h323_vsa(const uint8_t* v, Py_ssize_t vlen, Span* conf_id) noexcept nogil:
    """A Vendor-Specific value: for Cisco and Quintum, h323-conf-id (bare or "h323-conf-id=" prefixed)
    into `conf_id` when present; other vendors are ignored, as the reference does. False for a
    malformed Cisco or Quintum chain, which radcore.packet._split_vsa keeps whole (so it carries no
    conf-id there): rather than mirror that, the lanes leave it to the reference."""
    cdef Py_ssize_t sub = 4
    if vlen < 4 or (_be32(v) != 9 and _be32(v) != 6618):
        return True
    if sub >= vlen:
        return False
    while sub < vlen:
        if sub + 2 > vlen or v[sub + 1] < 2 or sub + v[sub + 1] > vlen:
            return False
        if v[sub] == 24:
            conf_id.p = v + sub + 2
            conf_id.n = v[sub + 1] - 2
            if conf_id.n >= 13 and _equal(conf_id.p, _CONF_NAME, 13):
                conf_id.p += 13
                conf_id.n -= 13
        sub += v[sub + 1]
    return True


cdef bint _parse(const uint8_t* pkt, Py_ssize_t length, Acct* a) noexcept nogil:
    """Walk the attributes as radcore.packet.parse_request does (the last of a repeated one wins);
    False for anything the lane leaves to the reference."""
    cdef Py_ssize_t pos = HEADER, alen, vlen
    cdef const uint8_t* v
    cdef int atype
    a.user.n = a.nas_identifier.n = a.called.n = a.session_id.n = a.conf_id.n = 0
    a.user.p = a.nas_identifier.p = a.called.p = a.session_id.p = a.conf_id.p = NULL
    a.nas_ip = NULL
    a.status = 0
    a.session_time = -1
    a.delay_time = 0
    a.terminate_cause = 0
    a.ma_offset = -1
    while pos < length:
        if pos + 2 > length:
            return False
        atype = pkt[pos]
        alen = pkt[pos + 1]
        if alen < 2 or pos + alen > length:
            return False
        v = pkt + pos + 2
        vlen = alen - 2
        if atype == 1:
            a.user.p = v; a.user.n = vlen
        elif atype == 4:
            if vlen != 4:
                return False
            a.nas_ip = v
        elif atype == 32:
            a.nas_identifier.p = v; a.nas_identifier.n = vlen
        elif atype == 30:
            a.called.p = v; a.called.n = vlen
        elif atype == 44:
            a.session_id.p = v; a.session_id.n = vlen
        elif atype == 80:
            if vlen != 16 or a.ma_offset >= 0:
                return False  # the reference drops a malformed or second Message-Authenticator
            a.ma_offset = pos + 2
        elif atype == 33:
            return False  # Proxy-State: echoed in the reply by the reference
        elif atype == 40 or atype == 46 or atype == 41 or atype == 49 or atype == 55:
            if vlen != 4:
                return False
            if atype == 40:
                a.status = _be32(v)
            elif atype == 46:
                a.session_time = _be32(v)
            elif atype == 41:
                a.delay_time = _be32(v)
            elif atype == 49:
                a.terminate_cause = _be32(v)
        elif atype == 26 and not _h323_vsa(v, vlen, &a.conf_id):
            return False
        pos += alen
    return (_ascii(a.user) and _ascii(a.nas_identifier) and _ascii(a.called) and _ascii(a.session_id)
            and _ascii(a.conf_id))
