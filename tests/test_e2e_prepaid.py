"""End to end: a real `radcore serve` process, real UDP, real LMDB, and third-party NAS clients.

pyrad and FreeRADIUS's radclient play the gateway: card authentication, number authorization,
Start, Interim-Update, Stop. The card's balance and its CDR, read from the store afterwards, must
equal an expectation computed here by hand, to the micro-unit. A second test kills the server
with SIGKILL under accounting load and checks that every acknowledged Stop survived.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pyrad.client import Client as PyradClient
from pyrad.dictionary import Dictionary
from pyrad import packet as pyrad_packet

from radcore import dictionary as d
from radcore import packet
from radcore.generation import generate_series
from radcore.keys import KeyRing
from radcore.rating import Rate, put_rate, put_rate_table
from radcore.store import RateTable, Series, Store, card_key, get_card, iter_card_cdrs

from helpers_server import ServerProcess, write_config

TESTS = Path(__file__).resolve().parent
SECRET = "e2e-prepaid-secret-0123456789"
UK = Rate(prefix="44", price_per_minute=120_000, connection_fee=50_000, min_volume=60, interval=6)


def provision(tmp_path: Path, quantity: int = 5, face_balance: int = 10_000_000) -> dict[int, str]:
    """Rate table + series 45 in the server's data dir, before it starts; returns serial -> PIN."""
    store = Store(tmp_path / "var", map_size=1 << 30)
    keyring = KeyRing.load_or_create(str(tmp_path / "var" / "radcore.key"))
    try:
        with store.begin(write=True) as txn:
            put_rate_table(txn, store, RateTable(name="retail", currency="USD"))
            put_rate(txn, store, "retail", UK)
        generate_series(store, keyring, Series(number=45, name="e2e", face_balance=face_balance,
                                               quantity=quantity, pin_length=10, rate_table="retail"),
                        clock=lambda: int(time.time()))
        pins = {}
        with store.begin() as txn:
            for serial in range(quantity):
                key = card_key(45, serial)
                pins[serial] = keyring.decrypt_pin(get_card(txn, store, key).pin_blob, key)
        return pins
    finally:
        store.close()


def read_card(tmp_path: Path, serial: int):
    store = Store(tmp_path / "var", map_size=1 << 30)
    try:
        with store.begin() as txn:
            key = card_key(45, serial)
            return get_card(txn, store, key), [c for _, c in iter_card_cdrs(txn, store, key)]
    finally:
        store.close()


def start_server(tmp_path: Path, workers: int = 2) -> ServerProcess:
    config = write_config(tmp_path, workers=workers, clients=[
        {"name": "gw", "network": "127.0.0.1", "secret": SECRET, "profile": "cisco"}])
    return ServerProcess(config, handler="radcore.handler:make_handler")


def pyrad_client(server: ServerProcess) -> PyradClient:
    client = PyradClient(server="127.0.0.1", authport=server.auth_port, acctport=server.acct_port,
                         secret=SECRET.encode(), dict=Dictionary(str(TESTS / "vectors" / "dictionary")))
    client.timeout = 3
    client.retries = 2
    return client


def pyrad_auth(client: PyradClient, number: str, pin: str, called: str = "", conf_id: str = ""):
    req = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=number)
    req["User-Password"] = req.PwCrypt(pin)
    req["NAS-IP-Address"] = "192.0.2.10"
    if called:
        req["Called-Station-Id"] = called
    if conf_id:
        req["h323-conf-id"] = f"h323-conf-id={conf_id}"
    req.add_message_authenticator()
    return client.SendPacket(req)


def pyrad_acct(client: PyradClient, number: str, status: str, conf_id: str, session_time=None):
    req = client.CreateAcctPacket(User_Name=number)
    req["Acct-Status-Type"] = status
    req["NAS-IP-Address"] = "192.0.2.10"
    req["Acct-Session-Id"] = f"sess-{conf_id}"
    req["Called-Station-Id"] = "442079460000"
    req["h323-conf-id"] = f"h323-conf-id={conf_id}"
    if session_time is not None:
        req["Acct-Session-Time"] = session_time
    return client.SendPacket(req)


def vsa(reply, name: str) -> str:
    value = reply[name][0]
    return value.split("=", 1)[1] if "=" in value else value


def test_pyrad_call_flow_debits_exactly(tmp_path):
    pins = provision(tmp_path)
    with start_server(tmp_path) as server:
        client = pyrad_client(server)
        reply = pyrad_auth(client, "45-000000000", pins[0])
        assert reply.code == pyrad_packet.AccessAccept
        assert vsa(reply, "h323-credit-amount") == "10.00"
        assert vsa(reply, "h323-return-code") == "0"

        reply = pyrad_auth(client, "45000000000", pins[0], called="442079460000", conf_id="CALL-1")
        assert reply.code == pyrad_packet.AccessAccept
        assert vsa(reply, "h323-credit-time") == "4974"  # (10.00 - 0.05) / 0.002 on the 60+6k grid
        assert reply["Session-Timeout"] == [4974]

        for status, t in (("Start", None), ("Interim-Update", 45), ("Stop", 187)):
            assert pyrad_acct(client, "45-000000000", status, "CALL-1", t).code == \
                pyrad_packet.AccountingResponse
        # The gateway retransmits the Stop with a new Identifier: still one debit.
        assert pyrad_acct(client, "45-000000000", "Stop", "CALL-1", 187).code == \
            pyrad_packet.AccountingResponse

        reply = pyrad_auth(client, "45-000000000", "0000000000")
        assert reply.code == pyrad_packet.AccessReject
        assert vsa(reply, "h323-return-code") == str(int(d.ReturnCode.INVALID_PASSWORD))
        client._CloseSocket()  # pyrad has no public close

    card, cdrs = read_card(tmp_path, 0)
    cost = 50_000 + 192 * 2_000  # 187 s -> 60 + 22*6 = 192 s billed at 0.002/s
    assert card.balance == 10_000_000 - cost
    assert (card.reserved, card.open_calls, card.failed_pins) == (0, 0, 1)
    assert len(cdrs) == 1
    assert (cdrs[0].cost, cdrs[0].duration, cdrs[0].billed_seconds, cdrs[0].conf_id) == (
        cost, 187, 192, "CALL-1")


@pytest.mark.skipif(not shutil.which("radclient") and not os.environ.get("RADCORE_REQUIRE_INTEROP"),
                    reason="radclient (freeradius-utils) is not installed")
def test_radclient_call_flow(tmp_path):
    pins = provision(tmp_path)

    def radclient(port: int, kind: str, attrs: str) -> str:
        done = subprocess.run(["radclient", "-x", "-r", "2", "-t", "3", f"127.0.0.1:{port}", kind, SECRET],
                              input=attrs, capture_output=True, text=True, timeout=30)
        return done.stdout + done.stderr

    with start_server(tmp_path) as server:
        base = f'User-Name = "45-000000001", User-Password = "{pins[1]}", Message-Authenticator = 0x00'
        out = radclient(server.auth_port, "auth", base)
        assert "Access-Accept" in out and "h323-credit-amount" in out
        out = radclient(server.auth_port, "auth",
                        base + ', Called-Station-Id = "442079460000", h323-conf-id = "h323-conf-id=RC-1"')
        assert "Access-Accept" in out and 'h323-credit-time = "h323-credit-time=4974"' in out
        acct = ('User-Name = "45-000000001", Acct-Session-Id = "rc-1", '
                'h323-conf-id = "h323-conf-id=RC-1", Called-Station-Id = "442079460000", ')
        assert "Accounting-Response" in radclient(server.acct_port, "acct", acct + "Acct-Status-Type = Start")
        assert "Accounting-Response" in radclient(
            server.acct_port, "acct", acct + "Acct-Status-Type = Stop, Acct-Session-Time = 61")
        out = radclient(server.auth_port, "auth",
                        f'User-Name = "45-000000001", User-Password = "{pins[2]}", Message-Authenticator = 0x00')
        assert "Access-Reject" in out

    card, cdrs = read_card(tmp_path, 1)
    assert card.balance == 10_000_000 - (50_000 + 66 * 2_000)
    assert len(cdrs) == 1 and cdrs[0].duration == 61


def _worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.mark.slow
def test_sigkill_under_accounting_load_loses_no_acknowledged_stop(tmp_path):
    """Send Stops as fast as replies come, SIGKILL a worker mid-stream and later the whole server,
    restart, and check every acknowledged Stop has its CDR and its debit (and nothing twice)."""
    calls = 400
    pins = provision(tmp_path, quantity=calls, face_balance=1_000_000)
    del pins
    secret = SECRET.encode()
    acked: set[int] = set()
    sent_times: dict[int, int] = {}

    def stop_packet(serial: int, ident: int) -> bytes:
        attrs = [(d.USER_NAME, f"45-{serial:09d}".encode()),
                 (d.NAS_IP_ADDRESS, bytes([192, 0, 2, 20])),
                 (d.ACCT_STATUS_TYPE, (2).to_bytes(4, "big")),
                 (d.ACCT_SESSION_ID, f"kill-{serial}".encode()),
                 (d.CALLED_STATION_ID, b"442079460000"),
                 (d.ACCT_SESSION_TIME, (60 + serial % 50).to_bytes(4, "big"))]
        return packet.encode_accounting_request(ident, attrs, secret)

    def blast(server: ServerProcess, serials: range, kill_at: int | None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.5)
        pending = {}
        try:
            for n, serial in enumerate(serials):
                ident = serial & 0xFF
                sock.sendto(stop_packet(serial, ident), ("127.0.0.1", server.acct_port))
                pending[ident] = serial
                sent_times[serial] = 60 + serial % 50
                if kill_at is not None and n == kill_at:
                    os.kill(_worker_pids(server.pid)[0], signal.SIGKILL)
                if len(pending) >= 32 or n == len(serials) - 1:
                    deadline = time.monotonic() + 1.0
                    while pending and time.monotonic() < deadline:
                        try:
                            reply = sock.recv(4096)
                        except TimeoutError:
                            break
                        serial_of = pending.pop(reply[1], None)
                        if serial_of is not None:
                            acked.add(serial_of)
        finally:
            sock.close()

    with start_server(tmp_path) as server:
        blast(server, range(0, 200), kill_at=60)
        blast(server, range(200, 300), kill_at=None)
        os.kill(server.pid, signal.SIGKILL)  # the whole server, supervisor first
        for pid in _children_of_dead(server):
            os.kill(pid, signal.SIGKILL)
    with start_server(tmp_path) as server:  # reopens the same store
        blast(server, range(300, calls), kill_at=None)
        # Retransmit everything once more: nothing may be charged twice.
        blast(server, range(0, calls), kill_at=None)

    assert len(acked) >= calls * 0.9, f"only {len(acked)} of {calls} Stops were acknowledged"
    store = Store(tmp_path / "var", map_size=1 << 30)
    try:
        with store.begin() as txn:
            for serial in range(calls):
                key = card_key(45, serial)
                card = get_card(txn, store, key)
                cdrs = [c for _, c in iter_card_cdrs(txn, store, key)]
                billed = max(60, sent_times[serial])
                billed = 60 + -(-(billed - 60) // 6) * 6
                cost = 50_000 + billed * 2_000
                if serial in acked:
                    assert len(cdrs) == 1, f"acknowledged Stop of card {serial} has {len(cdrs)} CDRs"
                assert len(cdrs) <= 1
                assert card.balance == 1_000_000 - cost * len(cdrs)
    finally:
        store.close()


def _children_of_dead(server: ServerProcess) -> list[int]:
    """Workers whose supervisor was SIGKILLed exit on their own; collect any still around."""
    deadline = time.monotonic() + 5
    alive = []
    while time.monotonic() < deadline:
        alive = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_worker_of(int(p), server)]
        if not alive:
            break
        time.sleep(0.1)
    return alive


def _is_worker_of(pid: int, server: ServerProcess) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(server.config).encode() in cmdline and pid != server.pid
