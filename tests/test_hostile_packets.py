"""Malformed and hostile datagrams against a real prepaid server, one worker, both codecs.

Every case of RFC 6613 §2.6.4 ("silently discard" for RADIUS/UDP) and the RADIUS hygiene rules of
DESIGN.md: Length below 20 or above 4096 (a 4097-octet datagram too), attribute Length 0 or 1, an
attribute running past Length, attributes not exactly filling the packet, an invalid Code, an
unknown client, bad Request Authenticators, a missing or bad Message-Authenticator, Proxy-State
without Message-Authenticator (the BlastRADIUS rule, even for a client exempt from requiring it).

For each: no reply arrives, `radcore_dropped_total{reason=...}` (read from /metrics) grows by
exactly one, and a valid card authentication sent right after, from the same socket, is answered
with an Access-Accept. At the end the worker has never been restarted.
"""

from __future__ import annotations

import os
import struct
from itertools import count

import helpers_load as hl
import helpers_server as hs
import pytest

from radcore import dictionary as d
from radcore import packet
from radcore.store import CardStatus

SECRET = hl.SECRET.encode()
_ids = count(1)


@pytest.fixture(scope="module", params=hs.implementation_params())
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    pins = hl.provision(tmp, quantity=2, face_balance=10_000_000, initial_status=CardStatus.ACTIVATED)
    config = hl.write_config(tmp, workers=1, clients=[
        {"name": "gw", "network": "127.0.0.1", "secret": hl.SECRET, "profile": "cisco"},
        {"name": "legacy", "network": "127.0.0.3", "secret": hl.SECRET, "profile": "cisco",
         "require_message_authenticator": False}])
    with hl.prepaid_server(config, implementation=request.param) as proc:
        proc.pins = pins
        yield proc
        assert proc.metrics().get("radcore_worker_restarts_total", 0) == 0, proc.log()


def valid_auth(proc, ident: int) -> bytes:
    return hl.access_request(ident, hl.number(0), proc.pins[0])


def acct(ident: int = 9, secret: bytes = SECRET, extra=()) -> bytes:
    attrs = [(d.USER_NAME, hl.number(0).encode()), (d.ACCT_STATUS_TYPE, (1).to_bytes(4, "big")),
             (d.ACCT_SESSION_ID, b"hostile-1"), *extra]
    return packet.encode_accounting_request(ident, attrs, secret)


def with_length(data: bytes, length: int) -> bytes:
    return data[:2] + struct.pack("!H", length) + data[4:]


def resign_ma(data: bytes) -> bytes:
    """Recompute the first Message-Authenticator after editing an Access-Request."""
    buf = bytearray(data)
    pos = 20
    while pos < len(buf) and buf[pos] != d.MESSAGE_AUTHENTICATOR:
        pos += buf[pos + 1]
    buf[pos + 2:pos + 18] = packet.message_authenticator(bytes(buf), SECRET, bytes(buf[4:20]), pos + 2)
    return bytes(buf)


def hostile(case: str, proc) -> tuple[bytes, str, int]:
    """(datagram, expected drop reason, destination port) for one case."""
    good = valid_auth(proc, 200)
    header = bytes([d.Code.ACCESS_REQUEST, 201]) + (20).to_bytes(2, "big") + os.urandom(16)
    auth, acct_port = proc.auth_port, proc.acct_port
    filler = b"".join(bytes((d.REPLY_MESSAGE, 255)) + bytes(253) for _ in range(16))
    big = struct.pack("!BBH", 1, 202, 4097) + os.urandom(16) + filler[:4077]
    ma = bytes((d.MESSAGE_AUTHENTICATOR, 18)) + bytes(16)
    two_ma = hl.access_request(203, hl.number(0), proc.pins[0])
    two_ma = with_length(two_ma + ma, len(two_ma) + 18)
    short_ma = good[:20] + bytes((d.MESSAGE_AUTHENTICATOR, 17)) + good[22:37] + good[38:]
    short_ma = with_length(short_ma, len(short_ma))
    return {
        # RFC 2865 §3 / RFC 6613 §2.6.4: the header and the Length field
        "empty": (b"", "short", auth),
        "shorter_than_header": (good[:19], "short", auth),
        "length_19": (with_length(good[:20], 19), "bad_length", auth),
        "length_below_20_with_attributes": (with_length(good, 12), "bad_length", auth),
        "length_4097": (big, "bad_length", auth),
        "length_65535": (with_length(good, 65535), "bad_length", auth),
        "length_beyond_datagram": (with_length(good, len(good) + 1), "truncated", auth),
        # attributes
        "attribute_length_0": (with_length(header + bytes([d.USER_NAME, 0]), 22), "bad_attribute", auth),
        "attribute_length_1": (with_length(header + bytes([d.USER_NAME, 1]), 22), "bad_attribute", auth),
        "attribute_past_length": (with_length(header + bytes([d.USER_NAME, 9, 65, 66]), 24),
                                  "bad_attribute", auth),
        "stray_octet_after_attributes": (with_length(good + b"\x01", len(good) + 1), "bad_attribute", auth),
        "vsa_past_length": (with_length(header + bytes([26, 40]) + struct.pack("!I", 9), 26),
                            "bad_attribute", auth),
        "nas_ip_of_3_octets": (resign_ma(with_length(good + bytes([d.NAS_IP_ADDRESS, 5, 1, 2, 3]),
                                                     len(good) + 5)), "bad_attribute", auth),
        "acct_session_time_of_2_octets": (acct(extra=[(d.ACCT_SESSION_TIME, b"\x00\x01")]),
                                          "bad_attribute", acct_port),
        "user_password_of_17_octets": (resign_ma(with_length(good + bytes([d.USER_PASSWORD, 19]) + bytes(17),
                                                             len(good) + 19)), "bad_password", auth),
        # codes a server never accepts (responses do not match any request of ours)
        "code_access_accept": (bytes([d.Code.ACCESS_ACCEPT]) + good[1:], "bad_code", auth),
        "code_accounting_response": (bytes([d.Code.ACCOUNTING_RESPONSE]) + acct()[1:], "bad_code", acct_port),
        "code_0": (bytes([0]) + good[1:], "bad_code", auth),
        "code_255": (bytes([255]) + good[1:], "bad_code", auth),
        "code_status_client": (bytes([d.Code.STATUS_CLIENT]) + good[1:], "bad_code", auth),
        "accounting_on_auth_port": (acct(), "wrong_port", auth),
        "access_request_on_acct_port": (good, "wrong_port", acct_port),
        # authenticators
        "accounting_bad_request_authenticator": (acct()[:4] + os.urandom(16) + acct()[20:],
                                                 "bad_authenticator", acct_port),
        "accounting_wrong_secret": (acct(secret=b"not-the-shared-secret"), "bad_authenticator", acct_port),
        "accounting_with_bad_message_authenticator": (
            packet.encode_accounting_request(9, [(d.MESSAGE_AUTHENTICATOR, os.urandom(16)),
                                                 (d.ACCT_STATUS_TYPE, (1).to_bytes(4, "big"))], SECRET),
            "bad_message_authenticator", acct_port),
        "missing_message_authenticator": (hl.access_request(204, hl.number(0), proc.pins[0],
                                                            message_authenticator=False),
                                          "missing_message_authenticator", auth),
        "corrupt_message_authenticator": (good[:22] + bytes([good[22] ^ 1]) + good[23:],
                                          "bad_message_authenticator", auth),
        "message_authenticator_wrong_secret": (hl.access_request(205, hl.number(0), proc.pins[0],
                                                                 secret="another-secret-entirely"),
                                               "bad_message_authenticator", auth),
        "message_authenticator_of_15_octets": (short_ma, "bad_message_authenticator", auth),
        "two_message_authenticators": (two_ma, "bad_message_authenticator", auth),
        "status_server_without_message_authenticator": (
            packet.encode_access_request(206, os.urandom(16), [], SECRET, code=d.Code.STATUS_SERVER,
                                         message_authenticator=False),
            "missing_message_authenticator", auth),
        "not_radcore_at_all": (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "bad_length", auth),
    }[case]


CASES = ["empty", "shorter_than_header", "length_19", "length_below_20_with_attributes", "length_4097",
         "length_65535", "length_beyond_datagram", "attribute_length_0", "attribute_length_1",
         "attribute_past_length", "stray_octet_after_attributes", "vsa_past_length", "nas_ip_of_3_octets",
         "acct_session_time_of_2_octets", "user_password_of_17_octets", "code_access_accept",
         "code_accounting_response", "code_0", "code_255", "code_status_client", "accounting_on_auth_port",
         "access_request_on_acct_port", "accounting_bad_request_authenticator", "accounting_wrong_secret",
         "accounting_with_bad_message_authenticator", "missing_message_authenticator",
         "corrupt_message_authenticator", "message_authenticator_wrong_secret",
         "message_authenticator_of_15_octets", "two_message_authenticators",
         "status_server_without_message_authenticator", "not_radcore_at_all"]


def dropped(proc, reason: str) -> float:
    return proc.metrics().get(hs.metric_key("radcore_dropped_total", reason=reason), 0.0)


def assert_dropped_then_served(proc, nas: hs.UdpClient, data: bytes, port: int, reason: str) -> None:
    before = dropped(proc, reason)
    nas.send(port, data)
    proc.wait_metric("radcore_dropped_total", before + 1, reason=reason)
    ident = next(_ids) % 200
    follow = valid_auth(proc, ident)
    raw = nas.exchange(proc.auth_port, follow)
    assert raw is not None, f"no answer to the valid request after the hostile one\n{proc.log()}"
    reply = packet.decode_response(raw, follow[4:20], SECRET)  # also proves it is not a reply to `data`
    assert reply.code == d.Code.ACCESS_ACCEPT and reply.identifier == ident
    assert reply.attributes[0][0] == d.MESSAGE_AUTHENTICATOR
    assert nas.recv(0.05) is None, "the hostile datagram was answered"
    assert dropped(proc, reason) == before + 1


@pytest.mark.parametrize("case", CASES)
def test_hostile_datagram_is_dropped_counted_and_the_next_request_answered(server, case):
    data, reason, port = hostile(case, server)
    with hs.UdpClient() as nas:
        assert_dropped_then_served(server, nas, data, port, reason)


def test_unknown_client_is_dropped_and_counted(server):
    before = dropped(server, "unknown_client")
    with hs.UdpClient("127.0.0.2") as stranger:
        stranger.send(server.auth_port, valid_auth(server, 1))
        server.wait_metric("radcore_dropped_total", before + 1, reason="unknown_client")
        assert stranger.recv(0.2) is None
    with hs.UdpClient() as nas:
        follow = valid_auth(server, 2)
        assert packet.decode_response(nas.exchange(server.auth_port, follow), follow[4:20], SECRET).code \
            == d.Code.ACCESS_ACCEPT


def test_proxy_state_without_message_authenticator_is_dropped_even_when_not_required(server):
    """The client 127.0.0.3 is exempt from requiring Message-Authenticator, but Proxy-State in an
    Access-Request is what BlastRADIUS forges, so it still needs one (packet.parse_request)."""
    with hs.UdpClient("127.0.0.3") as legacy:
        plain = hl.access_request(11, hl.number(1), server.pins[1], message_authenticator=False)
        raw = legacy.exchange(server.auth_port, plain)
        assert raw is not None and packet.decode_response(raw, plain[4:20], SECRET).code == d.Code.ACCESS_ACCEPT
        proxied = hl.access_request(12, hl.number(1), server.pins[1], message_authenticator=False,
                                    proxy_state=b"hop-1")
        before = dropped(server, "missing_message_authenticator")
        legacy.send(server.auth_port, proxied)
        server.wait_metric("radcore_dropped_total", before + 1, reason="missing_message_authenticator")
        assert legacy.recv(0.1) is None
        signed = hl.access_request(13, hl.number(1), server.pins[1], proxy_state=b"hop-1")
        reply = packet.decode_response(legacy.exchange(server.auth_port, signed), signed[4:20], SECRET)
        assert reply.code == d.Code.ACCESS_ACCEPT and (d.PROXY_STATE, b"hop-1") in reply.attributes


def test_a_burst_of_garbage_in_one_batch_costs_nothing_else(server):
    """Every case at once, interleaved with valid requests: each valid one is answered, exactly the
    hostile ones are dropped (they share batches with the valid ones)."""
    before = {reason: dropped(server, reason) for reason in {hostile(c, server)[1] for c in CASES}}
    expected = {}
    with hs.UdpClient() as nas:
        sent = {}
        for n, case in enumerate(CASES):
            data, reason, port = hostile(case, server)
            nas.send(port, data)
            expected[reason] = expected.get(reason, 0) + 1
            follow = valid_auth(server, 100 + n)
            nas.send(server.auth_port, follow)
            sent[100 + n] = follow
        answered = {}
        while len(answered) < len(sent):
            raw = nas.recv(3.0)
            assert raw is not None, f"{len(sent) - len(answered)} valid requests unanswered\n{server.log()}"
            request = sent[raw[1]]
            answered[raw[1]] = packet.decode_response(raw, request[4:20], SECRET).code
        assert set(answered.values()) == {d.Code.ACCESS_ACCEPT}
        assert nas.recv(0.1) is None
    for reason, n in expected.items():
        server.wait_metric("radcore_dropped_total", before[reason] + n, reason=reason)
        assert dropped(server, reason) == before[reason] + n, reason
