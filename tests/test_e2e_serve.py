"""`radcore serve` as an operator runs it: RADIUS workers plus the control process in one command.

A series created through the gRPC API (with a bootstrap admin token made by the CLI against the
data directory) authenticates over RADIUS in the same run, and a call's debit is visible through
the API afterwards; SIGTERM stops everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from control._proto.radcore.v1 import radcore_pb2 as pb
from control._proto.radcore.v1 import radcore_pb2_grpc as rpc
from radcore import dictionary as d
from radcore import packet

from helpers_server import ROOT, TESTS, ServerProcess, UdpClient, write_config

SECRET = "serve-e2e-secret-0123456789"
CLI = [sys.executable, "-m", "control.cli"]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def wait_control_ready(server: ServerProcess, timeout: float = 30.0) -> dict:
    path = server.config.parent / "ready.control.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if server.proc.poll() is not None:
            raise RuntimeError(f"radcore serve exited:\n{server.log()}")
        time.sleep(0.05)
    raise TimeoutError(f"control plane not ready:\n{server.log()}")


@pytest.fixture
def served(tmp_path):
    config = write_config(tmp_path, workers=2, clients=[
        {"name": "gw", "network": "127.0.0.1", "secret": SECRET, "profile": "cisco"}])
    token = subprocess.run(CLI + ["admin", "token", "create", "--local", "--config", str(config),
                                  "--role", "admin", "--json"],
                           capture_output=True, text=True, env=cli_env(), timeout=60)
    assert token.returncode == 0, token.stderr
    secret = json.loads(token.stdout)["token"]
    with ServerProcess(config, command=CLI + ["serve"]) as server:
        ports = wait_control_ready(server)
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc_port']}")
        grpc.channel_ready_future(channel).result(timeout=15)
        yield server, channel, [("authorization", f"Bearer {secret}")], ports
        channel.close()


def test_card_created_through_the_api_authenticates_over_radius(served):
    server, channel, auth, _ = served
    rates, series, cards = (rpc.RateServiceStub(channel), rpc.SeriesServiceStub(channel),
                            rpc.CardServiceStub(channel))
    rates.CreateRateTable(pb.CreateRateTableRequest(table=pb.RateTable(name="retail", currency="USD")),
                          metadata=auth)
    rates.PutRate(pb.PutRateRequest(rate_table="retail", rate=pb.Rate(
        prefix="44", price_per_minute_micro=120_000, connection_fee_micro=50_000, min_volume=60,
        interval=6)), metadata=auth)
    progress = list(series.CreateSeries(pb.CreateSeriesRequest(series=pb.Series(
        number=77, name="API series", face_balance_micro=5_000_000, quantity=1000, pin_length=10,
        rate_table="retail", language="es")), metadata=auth))
    assert progress[-1].series.number == 77 and progress[-1].done == 1000
    assert progress[-1].series.language == "es"
    card = cards.GetCard(pb.GetCardRequest(number="77-000000042", include_pin=True), metadata=auth)
    pin = card.pin.replace(" ", "")

    with UdpClient() as nas:
        # The series' language reaches the switch with the card authentication (the C lane's
        # answer) and with the number authorization.
        balance = nas.exchange(server.auth_port, packet.encode_access_request(
            3, os.urandom(16), [(d.USER_NAME, b"77-000000042")], SECRET.encode(), password=pin.encode()))
        assert balance is not None and balance[0] == d.Code.ACCESS_ACCEPT, server.log()
        assert b"h323-preferred-lang=es" in balance
        reply = nas.exchange(server.auth_port, packet.encode_access_request(
            1, os.urandom(16), [(d.USER_NAME, b"77-000000042"), (d.CALLED_STATION_ID, b"442079460000"),
                                (d.vsa_key(9, d.H323_CONF_ID), b"h323-conf-id=API-1")],
            SECRET.encode(), password=pin.encode()))
        assert reply is not None, server.log()
        assert reply[0] == d.Code.ACCESS_ACCEPT and b"h323-preferred-lang=es" in reply
        stop = packet.encode_accounting_request(2, [
            (d.USER_NAME, b"77-000000042"), (d.ACCT_STATUS_TYPE, (2).to_bytes(4, "big")),
            (d.ACCT_SESSION_ID, b"api-1"), (d.vsa_key(9, d.H323_CONF_ID), b"h323-conf-id=API-1"),
            (d.ACCT_SESSION_TIME, (90).to_bytes(4, "big"))], SECRET.encode())
        assert nas.exchange(server.acct_port, stop)[0] == d.Code.ACCOUNTING_RESPONSE

    after = cards.GetCard(pb.GetCardRequest(number="77000000042"), metadata=auth)
    assert after.balance_micro == 5_000_000 - (50_000 + 90 * 2_000)
    assert after.reserved_micro == 0


def test_sigterm_stops_workers_and_control_plane(served):
    server, channel, auth, ports = served
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert str(ports["pid"]) in children  # the control process is a supervised child
    assert server.stop(timeout=30) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def niceness(pid: int | str) -> set[int]:
    """The CPU niceness of every thread of a process (field 19 of /proc/PID/task/TID/stat)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out.add(int(fields[16]))
    return out


def test_the_control_process_gives_way_to_the_radius_workers(served):
    """`control.nice` (default 10) lowers every thread of the control process, the gRPC pool, the
    portal and the fee scheduler included; the workers keep the supervisor's priority."""
    server, _, _, ports = served
    (base,) = niceness(server.pid)
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    workers = [pid for pid in children if pid != str(ports["pid"])]
    assert len(workers) == 2
    control = niceness(ports["pid"])
    assert control == {min(19, base + 10)} and len(list(Path(f"/proc/{ports['pid']}/task").iterdir())) > 3
    for pid in workers:
        assert niceness(pid) == {base}
