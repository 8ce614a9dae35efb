"""The RADIUS server over real UDP: a real supervisor with forked workers in a subprocess, real
sockets, pyrad and radcore's client codec as NASes, counters read from /metrics over HTTP.

In-process tests at the end drive one `Worker` over real sockets for the cases a subprocess cannot
make deterministic (several copies of a request in one batch, a failing handler, an unencodable
reply), and unit-test the batch deduper and the metrics block.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import helpers_server as hs
import pytest

from radcore import dictionary as d
from radcore import packet
from radcore.dupcache import AUTH, BatchDeduper
from radcore.metrics import RateLimitedLog, SharedMetrics

SECRET = hs.SECRET.encode()


@pytest.fixture(scope="module", params=hs.implementation_params())
def server(request, tmp_path_factory):
    """One NoStoreHandler server with two workers per codec implementation, for the stateless
    tests; counters are compared as deltas, so the tests do not depend on order."""
    config = hs.write_config(tmp_path_factory.mktemp(f"server-{request.param}"))
    with hs.ServerProcess(config, implementation=request.param) as proc:
        yield proc


@pytest.fixture
def client():
    with hs.UdpClient() as c:
        yield c


def counter(proc, name: str, **labels) -> float:
    return proc.metrics().get(hs.metric_key(name, **labels), 0.0)


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def assert_answered_status(proc, client: hs.UdpClient, port: int, expected_code: int) -> None:
    auth = os.urandom(16)
    raw = client.exchange(port, hs.status_server(identifier=200, authenticator=auth))
    assert raw is not None, proc.log()
    reply = packet.decode_response(raw, auth, SECRET)  # verifies Response Authenticator and MA
    assert reply.code == expected_code
    assert reply.attributes[0][0] == d.MESSAGE_AUTHENTICATOR


# ---------------------------------------------------------------------------------------------
# Subprocess server: protocol hygiene


def test_status_server_on_both_ports(server, client):
    before = counter(server, "radcore_replies_total", type="status_server")
    assert_answered_status(server, client, server.auth_port, d.Code.ACCESS_ACCEPT)
    assert_answered_status(server, client, server.acct_port, d.Code.ACCOUNTING_RESPONSE)
    server.wait_metric("radcore_replies_total", before + 2, type="status_server")
    assert counter(server, "radcore_workers", implementation=server.ready["implementation"]) == 2


def test_access_request_gets_reject_with_message_authenticator_first(server, client):
    data, auth = hs.access_request(identifier=9)
    raw = client.exchange(server.auth_port, data)
    assert raw is not None, server.log()
    reply = packet.decode_response(raw, auth, SECRET)
    assert reply.code == d.Code.ACCESS_REJECT
    assert reply.attributes[0][0] == d.MESSAGE_AUTHENTICATOR
    assert (d.REPLY_MESSAGE, b"no card store configured") in reply.attributes


def test_unknown_client_is_dropped_and_counted(server):
    before = counter(server, "radcore_dropped_total", reason="unknown_client")
    with hs.UdpClient("127.0.0.2") as stranger:
        stranger.send(server.auth_port, hs.status_server())
        server.wait_metric("radcore_dropped_total", before + 1, reason="unknown_client")
        assert stranger.recv(0.3) is None


def test_accounting_with_bad_authenticator_is_dropped(server, client):
    before = counter(server, "radcore_dropped_total", reason="bad_authenticator")
    client.send(server.acct_port, hs.accounting_request(secret="not-the-secret-at-all"))
    server.wait_metric("radcore_dropped_total", before + 1, reason="bad_authenticator")
    assert client.recv(0.3) is None


@pytest.mark.parametrize("case, reason", [
    ("missing", "missing_message_authenticator"),
    ("corrupt", "bad_message_authenticator"),
    ("wrong_secret", "bad_message_authenticator"),
])
def test_access_request_without_valid_message_authenticator_is_dropped(server, client, case, reason):
    if case == "missing":
        data, _ = hs.access_request(identifier=21, message_authenticator=False)
    elif case == "corrupt":
        data, _ = hs.access_request(identifier=22)
        data = data[:22] + bytes([data[22] ^ 0xFF]) + data[23:]
    else:
        data, _ = hs.access_request(identifier=23, secret="another-secret-entirely")
    before = counter(server, "radcore_dropped_total", reason=reason)
    client.send(server.auth_port, data)
    server.wait_metric("radcore_dropped_total", before + 1, reason=reason)
    assert client.recv(0.3) is None


def _malformed(case: str) -> bytes:
    good, _ = hs.access_request(identifier=31)
    header = bytes([d.Code.ACCESS_REQUEST, 32]) + (22).to_bytes(2, "big") + os.urandom(16)
    return {
        "short": good[:10],
        "bad_length": good[:2] + (5000).to_bytes(2, "big") + good[4:],
        "length_below_20": good[:2] + (12).to_bytes(2, "big") + good[4:],
        "truncated": good[:2] + (len(good) + 10).to_bytes(2, "big") + good[4:],
        "attribute_length_0": header + bytes([d.USER_NAME, 0]),
        "attribute_length_1": header + bytes([d.USER_NAME, 1]),
        "bad_code": bytes([d.Code.ACCESS_ACCEPT]) + good[1:],
        "empty": b"",
    }[case]


@pytest.mark.parametrize("case, reason", [
    ("short", "short"), ("bad_length", "bad_length"), ("length_below_20", "bad_length"),
    ("truncated", "truncated"), ("attribute_length_0", "bad_attribute"),
    ("attribute_length_1", "bad_attribute"), ("bad_code", "bad_code"), ("empty", "short"),
])
def test_malformed_packets_are_counted_and_the_worker_keeps_serving(server, client, case, reason):
    before = counter(server, "radcore_dropped_total", reason=reason)
    client.send(server.auth_port, _malformed(case))
    server.wait_metric("radcore_dropped_total", before + 1, reason=reason)
    assert client.recv(0.2) is None
    assert_answered_status(server, client, server.auth_port, d.Code.ACCESS_ACCEPT)


def test_request_on_the_wrong_port_is_dropped(server, client):
    before = counter(server, "radcore_dropped_total", reason="wrong_port")
    data, _ = hs.access_request(identifier=41)
    client.send(server.acct_port, data)
    client.send(server.auth_port, hs.accounting_request(identifier=42))
    server.wait_metric("radcore_dropped_total", before + 2, reason="wrong_port")
    assert client.recv(0.3) is None


def test_retransmission_gets_the_cached_reply_and_a_new_authenticator_is_processed(server, client):
    dups = counter(server, "radcore_duplicates_total")
    rejects = counter(server, "radcore_replies_total", type="access_reject")
    data, auth = hs.access_request(identifier=77)
    first = client.exchange(server.auth_port, data)
    second = client.exchange(server.auth_port, data)
    assert first is not None and first == second, "byte-identical reply from the cache"
    server.wait_metric("radcore_duplicates_total", dups + 1)
    server.wait_metric("radcore_replies_total", rejects + 1, type="access_reject")
    assert counter(server, "radcore_replies_total", type="access_reject") == rejects + 1, \
        "the handler answered only once"

    fresh, fresh_auth = hs.access_request(identifier=77)  # same Identifier, new authenticator
    third = client.exchange(server.auth_port, fresh)
    assert third is not None and third != first
    assert packet.decode_response(third, fresh_auth, SECRET).code == d.Code.ACCESS_REJECT
    server.wait_metric("radcore_replies_total", rejects + 2, type="access_reject")
    assert counter(server, "radcore_duplicates_total") == dups + 1


def test_unanswered_accounting_is_not_cached(server, client):
    """NoStoreHandler records nothing, so it must not answer; the retransmission is retried."""
    before = counter(server, "radcore_dropped_total", reason="not_recorded")
    dups = counter(server, "radcore_duplicates_total")
    data = hs.accounting_request(identifier=88, session="unrecorded")
    client.send(server.acct_port, data)
    server.wait_metric("radcore_dropped_total", before + 1, reason="not_recorded")
    client.send(server.acct_port, data)
    server.wait_metric("radcore_dropped_total", before + 2, reason="not_recorded")
    assert client.recv(0.2) is None
    assert counter(server, "radcore_duplicates_total") == dups


PYRAD_DICTIONARY = """\
ATTRIBUTE	User-Name		1	string
ATTRIBUTE	User-Password		2	string	encrypt=1
ATTRIBUTE	Reply-Message		18	string
ATTRIBUTE	NAS-Identifier		32	string
ATTRIBUTE	Proxy-State		33	octets
ATTRIBUTE	Acct-Status-Type	40	integer
ATTRIBUTE	Acct-Session-Id		44	string
ATTRIBUTE	Message-Authenticator	80	octets
VALUE	Acct-Status-Type	Start	1
"""


def test_pyrad_client(server, tmp_path):
    from pyrad import packet as pyrad_packet
    from pyrad.client import Client
    from pyrad.dictionary import Dictionary

    path = tmp_path / "dictionary"
    path.write_text(PYRAD_DICTIONARY)
    nas = Client(server="127.0.0.1", authport=server.auth_port, acctport=server.acct_port,
                 secret=SECRET, dict=Dictionary(str(path)), retries=2, timeout=3, enforce_ma=True)
    try:
        req = nas.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name="45-001122333",
                                   message_authenticator=True)
        req["User-Password"] = req.PwCrypt("12345678")
        req["Proxy-State"] = b"hop-1"
        reply = nas.SendPacket(req)  # pyrad verifies the authenticator, MA and Proxy-State
        assert reply.code == pyrad_packet.AccessReject
        assert reply["Reply-Message"] == ["no card store configured"]
        assert reply["Proxy-State"] == [b"hop-1"]

        status = nas.CreateAuthPacket(code=pyrad_packet.StatusServer, message_authenticator=True)
        assert nas.SendPacket(status).code == pyrad_packet.AccessAccept
    finally:
        nas._CloseSocket()


# ---------------------------------------------------------------------------------------------
# Subprocess server: the handler seam, signals, restarts


def test_duplicates_never_reach_the_handler_twice(tmp_path):
    journal = tmp_path / "handled.log"
    config = hs.write_config(tmp_path)
    with hs.ServerProcess(config, handler="helpers_server:recording_handler",
                          env={"RADCORE_TEST_HANDLER_LOG": str(journal)}) as proc, hs.UdpClient() as nas:
        stop = hs.accounting_request(identifier=5, session="call-2", status=d.AcctStatus.STOP)
        replies = [nas.exchange(proc.acct_port, stop) for _ in range(2)]
        for _ in range(3):  # a burst: copies may share a batch or hit the cache; either way once
            nas.send(proc.acct_port, stop)
        replies += [nas.recv() for _ in range(3)]
        assert replies[0] is not None and all(r == replies[0] for r in replies), proc.log()
        assert packet.decode_response(replies[0], stop[4:20], SECRET).code == d.Code.ACCOUNTING_RESPONSE
        assert len(hs.handled_lines(journal)) == 1
        proc.wait_metric("radcore_duplicates_total", 4)

        other = hs.accounting_request(identifier=5, session="call-3", status=d.AcctStatus.STOP)
        assert nas.exchange(proc.acct_port, other) not in (None, replies[0])
        assert len(hs.handled_lines(journal)) == 2


def test_sigterm_stops_workers_and_exits_zero_promptly(tmp_path):
    with hs.ServerProcess(hs.write_config(tmp_path)) as proc:
        workers = children_of(proc.pid)
        assert len(workers) == 2
        started = time.monotonic()
        assert proc.stop(timeout=15) == 0, proc.log()
        assert time.monotonic() - started < 10
        for pid in workers:
            gone = not os.path.exists(f"/proc/{pid}")
            assert gone or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        assert not proc.ready_file.exists()


def test_sighup_reloads_clients_and_survives_a_broken_file(tmp_path):
    other_secret = "secret-of-the-second-gateway"
    config = hs.write_config(tmp_path)
    with hs.ServerProcess(config) as proc:
        with hs.UdpClient("127.0.0.2") as nas:
            nas.send(proc.auth_port, hs.status_server(secret=other_secret))
            proc.wait_metric("radcore_dropped_total", 1, reason="unknown_client")
            assert nas.recv(0.2) is None

        hs.write_config(tmp_path, clients=[
            {"name": "loopback", "network": "127.0.0.1", "secret": hs.SECRET, "profile": "cisco"},
            {"name": "second", "network": "127.0.0.2", "secret": other_secret, "profile": "quintum"}])
        proc.signal(signal.SIGHUP)
        # Several source ports, so both workers' client lists are exercised.
        nases = [hs.UdpClient("127.0.0.2") for _ in range(6)]
        try:
            for nas in nases:
                deadline = time.monotonic() + 10
                while True:
                    auth = os.urandom(16)
                    probe = hs.status_server(secret=other_secret, authenticator=auth)
                    raw = nas.exchange(proc.auth_port, probe, timeout=0.3)
                    if raw is not None:
                        reply = packet.decode_response(raw, auth, other_secret.encode())
                        assert reply.code == d.Code.ACCESS_ACCEPT
                        break
                    assert time.monotonic() < deadline, proc.log()
        finally:
            for nas in nases:
                nas.sock.close()

        config.write_text("[server\nbroken")
        proc.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "SIGHUP ignored" not in proc.log():
            assert time.monotonic() < deadline, proc.log()
            time.sleep(0.05)
        with hs.UdpClient() as nas:
            assert_answered_status(proc, nas, proc.auth_port, d.Code.ACCESS_ACCEPT)
        assert proc.proc.poll() is None


def test_a_killed_worker_is_restarted(tmp_path):
    with hs.ServerProcess(hs.write_config(tmp_path)) as proc:
        victim = children_of(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        proc.wait_metric("radcore_worker_restarts_total", 1)
        deadline = time.monotonic() + 10
        while len(children_of(proc.pid)) != 2 or victim in children_of(proc.pid):
            assert time.monotonic() < deadline, proc.log()
            time.sleep(0.05)
        for _ in range(6):  # different source ports reach both workers, the new one included
            with hs.UdpClient() as nas:
                assert_answered_status(proc, nas, proc.auth_port, d.Code.ACCESS_ACCEPT)
        assert "restarting in" in proc.log()


def test_a_second_server_on_a_busy_port_refuses_to_start(tmp_path, server):
    """SO_REUSEPORT must not let a second instance silently take half of the traffic."""
    (tmp_path / "b").mkdir()
    config = hs.write_config(tmp_path / "b")
    config.write_text(config.read_text().replace('auth_listen = "127.0.0.1:0"',
                                                 f'auth_listen = "127.0.0.1:{server.auth_port}"'))
    second = hs.ServerProcess(config)
    try:
        assert second.proc.wait(30) == 1
        assert "Address already in use" in second.log()
    finally:
        second.kill()


# ---------------------------------------------------------------------------------------------
# In-process: one Worker over real sockets


class ScriptedHandler:
    """Returns what the test scripted and remembers every batch it saw."""

    def __init__(self, reply):
        self.reply = reply
        self.batches: list[list] = []

    def handle(self, batch):
        self.batches.append(batch)
        if isinstance(self.reply, Exception):
            raise self.reply
        return [self.reply(req) for req, _, _ in batch]


@pytest.fixture
def worker_env(tmp_path):
    from radcore.config_file import load_config
    from radcore.server import Worker

    shared = SharedMetrics(1, implementation="python")
    auth_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    acct_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nas = hs.UdpClient()
    try:
        for sock in (auth_sock, acct_sock):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        config = load_config(hs.write_config(tmp_path))

        def make(handler):
            return Worker(config, handler, shared.recorder(0), auth_sock, acct_sock)
        yield make, shared, auth_sock, nas
    finally:
        nas.sock.close()
        auth_sock.close()
        acct_sock.close()
        shared.close()


def _serve_once(worker, sock, kind=AUTH):
    time.sleep(0.05)  # let loopback deliver everything sent so far
    worker._serve([[s for s, _ in worker.socks].index(sock)])


def test_copies_in_one_batch_are_handled_once_and_all_answered(worker_env):
    make, shared, auth_sock, nas = worker_env
    handler = ScriptedHandler(lambda req: (d.Code.ACCESS_ACCEPT, [(d.REPLY_MESSAGE, b"ok")]))
    worker = make(handler)
    data, auth = hs.access_request(identifier=1)
    for _ in range(3):
        nas.send(auth_sock.getsockname()[1], data)
    _serve_once(worker, auth_sock)
    assert len(handler.batches) == 1 and len(handler.batches[0]) == 1
    replies = [nas.recv(1) for _ in range(3)]
    assert replies[0] is not None and replies.count(replies[0]) == 3
    assert packet.decode_response(replies[0], auth, SECRET).code == d.Code.ACCESS_ACCEPT
    snap = shared.snapshot()
    assert snap["duplicates"] == 2 and snap["replies"]["access_accept"] == 1 and snap["batches"] == 1
    assert snap["latency"]["count"] == 3

    nas.send(auth_sock.getsockname()[1], data)  # later retransmission: from the cache
    _serve_once(worker, auth_sock)
    assert nas.recv(1) == replies[0] and len(handler.batches) == 1


def test_a_failing_handler_costs_its_batch_only(worker_env):
    make, shared, auth_sock, nas = worker_env
    worker = make(ScriptedHandler(RuntimeError("store on fire")))
    data, _ = hs.access_request(identifier=2)
    nas.send(auth_sock.getsockname()[1], data)
    nas.send(auth_sock.getsockname()[1], hs.status_server(identifier=3))
    _serve_once(worker, auth_sock)
    reply = nas.recv(1)
    assert reply is not None and reply[:2] == bytes([d.Code.ACCESS_ACCEPT, 3]), "Status-Server still answered"
    assert nas.recv(0.2) is None
    assert shared.snapshot()["dropped"]["handler_error"] == 1

    worker.handler = ScriptedHandler(lambda req: (d.Code.ACCESS_REJECT, []))
    nas.send(auth_sock.getsockname()[1], data)  # not cached: the retransmission is processed
    _serve_once(worker, auth_sock)
    assert nas.recv(1) is not None


def test_an_unencodable_reply_is_isolated(worker_env):
    make, shared, auth_sock, nas = worker_env
    too_long = (d.REPLY_MESSAGE, b"x" * 300)
    worker = make(ScriptedHandler(
        lambda req: (d.Code.ACCESS_REJECT, [too_long] if req.identifier == 5 else [])))
    for identifier in (4, 5, 6):
        nas.send(auth_sock.getsockname()[1], hs.access_request(identifier=identifier)[0])
    _serve_once(worker, auth_sock)
    got = sorted(r[1] for r in (nas.recv(1), nas.recv(1)) if r)
    assert got == [4, 6] and nas.recv(0.2) is None
    assert shared.snapshot()["dropped"]["encode_error"] == 1


def test_no_store_handler():
    from radcore.server import NoReply, NoStoreHandler

    access = packet.parse_request(hs.access_request()[0], SECRET)
    acct = packet.parse_request(hs.accounting_request(), SECRET)
    out = NoStoreHandler().handle([(access, None, ("127.0.0.1", 1)), (acct, None, ("127.0.0.1", 1))])
    assert out[0] == (d.Code.ACCESS_REJECT, [(d.REPLY_MESSAGE, b"no card store configured")])
    assert isinstance(out[1], NoReply) and out[1].reason == "not_recorded"


# ---------------------------------------------------------------------------------------------
# Units: batch deduper, metrics block, rate-limited log


def test_batch_deduper():
    dedup = BatchDeduper()
    assert dedup.leader("k", b"a", 0) is None
    assert dedup.leader("k", b"a", 1) == 0
    assert dedup.leader("k", b"b", 2) is None
    assert dedup.leader("k", b"b", 3) == 2


def test_metrics_survive_a_worker_restart_and_render():
    shared = SharedMetrics(2, implementation="python")
    try:
        rec = shared.recorder(1)
        rec.received(d.Code.ACCESS_REQUEST)
        rec.dropped("short", 2)
        rec.dropped("no-such-reason")
        rec.replied(d.Code.ACCESS_REJECT)
        rec.observe(0.0004, 3)
        rec.publish()
        again = shared.recorder(1)  # what a restarted worker in slot 1 sees
        again.received(d.Code.ACCESS_REQUEST)
        again.publish()
        snap = shared.snapshot()
        assert snap["received"]["access_request"] == 2
        assert snap["dropped"]["short"] == 2 and snap["dropped"]["other"] == 1
        assert snap["latency"]["buckets"][0.0005] == 3 and snap["latency"]["count"] == 3
        text = shared.render().decode()
        assert 'radcore_dropped_total{reason="short"} 2.0' in text
        assert 'radcore_request_duration_seconds_bucket{le="0.00025"} 0.0' in text
        assert 'radcore_request_duration_seconds_bucket{le="+Inf"} 3.0' in text
        with pytest.raises(ValueError):
            shared.recorder(2)
    finally:
        shared.close()


def test_rate_limited_log(caplog):
    import logging
    ratelog = RateLimitedLog(logging.getLogger("radcore.test"), interval=60)
    with caplog.at_level(logging.INFO, logger="radcore.test"):
        for i in range(5):
            ratelog(logging.INFO, "short", "dropped %s", i)
        ratelog(logging.INFO, "other", "different %s", "key")
    assert [r.getMessage() for r in caplog.records] == ["dropped 0", "different key"]
