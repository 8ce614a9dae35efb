"""`radcore admin` end to end: the CLI runs as a subprocess against a real gRPC server (started in this
process on 127.0.0.1:0 with a FixedClock) over a real LMDB store in tmp_path.

Parsing helpers (amounts, dates, --set) are also tested in-process, and every command's --help is
checked for examples without spawning anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from control import admin, admin_series
from control import admin_values as values
from control.auth import create_token
from helpers_control import NOW, harness
from radcore.store import CardStatus, Session, SessionState, card_key, get_card, put_card, put_session, session_key

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400


class Cli:
    """Runs `python -m control.cli admin ...` against the harness's server with a token."""

    def __init__(self, h, tmp_path: Path, token: str):
        self.h, self.tmp_path, self.token = h, tmp_path, token
        self.server = f"127.0.0.1:{h.port}"

    def __call__(self, *args: str, token: str | None = "default", server: str | None = "default",
                 stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADCORE_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        if server is not None:
            env["RADCORE_SERVER"] = self.server if server == "default" else server
        if token is not None:
            env["RADCORE_TOKEN"] = self.token if token == "default" else token
        return subprocess.run([sys.executable, "-m", "control.cli", "admin", *args], input=stdin,
                              capture_output=True, text=True, timeout=120, env=env, cwd=self.tmp_path,
                              check=False)

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:
        result = self(*args, **kw)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str, **kw):
        return json.loads(self.ok(*args, "--json", **kw).stdout)

    def bad(self, *args: str, code: int = 2, **kw) -> str:
        """Runs a failing command; returns its single stderr line."""
        result = self(*args, **kw)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        return lines[0]


@pytest.fixture
def cli(tmp_path):
    with harness(tmp_path) as h:
        _, secret = create_token(h.env.store, "admin", "", note="cli tests", clock=h.env.clock)
        yield Cli(h, tmp_path, secret)


def make_series(cli: Cli, number: int, quantity: int = 20, *extra: str) -> dict:
    return cli.json("series", "create", str(number), "--name", f"s{number}", "--quantity", str(quantity),
                    "--face-value", "5.00", "--rate-table", "std", *extra)


# --- tokens ------------------------------------------------------------------------------------------

def test_token_create_local_then_use(cli, tmp_path):
    (tmp_path / "radcore.toml").write_text('[server]\ndata_dir = "db"\nmap_size_mb = 1024\n')
    result = cli.ok("token", "create", "--local", "--config", "radcore.toml", "--role", "admin",
                    "--note", "bootstrap", token=None, server=None)
    secret = result.stdout.strip()
    assert len(result.stdout.splitlines()) == 1 and len(secret) >= 40
    assert "shown only" in result.stderr and secret not in result.stderr
    local = cli.json("token", "create", "--local", "--config", "radcore.toml", "--role", "reseller",
                     "--reseller", "r2", token=None, server=None)
    assert local["reseller"] == "r2" and local["id"].startswith("tk-") and local["token"] != secret

    listed = cli.json("token", "list", token=secret)["tokens"]
    boot = next(t for t in listed if t["note"] == "bootstrap")
    assert boot["role"] == "admin" and boot["id"].startswith("tk-") and not boot["revoked"]
    assert "secret" not in json.dumps(listed)
    table = cli.ok("token", "list", token=secret).stdout
    assert boot["id"] in table and "bootstrap" in table

    entries = cli.json("audit", "list", "--target", f"token/{boot['id']}", token=secret)["entries"]
    assert [(e["rpc"], e["actor"]) for e in entries] == [("CreateToken", "local")]

    # A reseller token over the API, then revoked: the next call with it is refused (exit 2).
    made = cli.json("token", "create", "--role", "reseller", "--reseller", "r1", "--note", "r1 portal",
                    token=secret)
    assert made["reseller"] == "r1" and made["role"] == "reseller" and made["token"]
    assert cli.json("token", "list", token=made["token"])["tokens"][0]["id"] == made["id"]
    assert cli.json("token", "revoke", made["id"], token=secret)["revoked"] is True
    line = cli.bad("token", "list", token=made["token"])
    assert "revoked" in line and made["token"] not in line


def test_token_create_local_bad_config_is_one_line(cli):
    line = cli.bad("token", "create", "--local", "--config", "missing.toml", "--role", "admin")
    assert "missing.toml" in line and "cannot read" in line


# --- series ------------------------------------------------------------------------------------------

def test_series_create_with_progress_then_list_show_edit_status(cli):
    result = cli.ok("series", "create", "45", "--name", "Promo [bold]5", "--quantity", "5000",
                    "--face-value", "5.00", "--rate-table", "std", "--tax-profile", "vat")
    assert "Generating series 45" in result.stderr and "5000/5000" in result.stderr
    assert "Created series 45: 5000 cards" in result.stdout and "5.00 USD" in result.stdout

    listed = cli.ok("series", "list").stdout
    assert "Promo [bold]5" in listed and "5.00 USD" in listed and "5000" in listed

    shown = cli.json("series", "show", "45")
    assert shown["face_balance_micro"] == 5_000_000 and shown["face_balance"] == "5.00"
    assert shown["status"] == "active" and shown["initial_status"] == "pending"
    assert shown["created_at"] == "2023-11-14T22:13:20Z" and shown["expiry_date"] is None

    edited = cli.json("series", "edit", "45", "--maintenance-fee", "0.10", "--tax-profile", "",
                      "--set", "maintenance_period_hours=24", "--set", "notes=reprint",
                      "--set", "activation-fee=0.25", "--no-control-panel")
    assert edited["maintenance_fee_micro"] == 100_000 and edited["maintenance_period_hours"] == 24
    assert edited["notes"] == "reprint" and edited["tax_profile"] == ""
    assert edited["activation_fee_micro"] == 250_000 and edited["control_panel"] is False
    text = cli.ok("series", "show", "45").stdout
    assert "0.10 USD every 24 h" in text and "reprint" in text

    line = cli.bad("series", "edit", "45", "--set", "quantity=7")
    assert line.startswith("radcore: quantity")
    assert "nothing to change" in cli.bad("series", "edit", "45")

    assert "now stopped" in cli.ok("series", "status", "45", "stopped").stdout
    assert cli.json("series", "list")["series"] == []
    stopped = cli.json("series", "list", "--status", "stopped")
    assert [s["number"] for s in stopped["series"]] == [45] and stopped["total_count"] == 1
    assert cli.json("series", "status", "45", "active")["status"] == "active"


# --- cards -------------------------------------------------------------------------------------------

def test_cards_list_show_adjust_block_unblock(cli):
    make_series(cli, 46)
    page = cli.ok("cards", "list", "--series", "46", "--limit", "5").stdout
    assert "46-000000000" in page and "46-000000004" in page and "46-000000005" not in page
    assert "more match" in page and "5.00 USD" in page

    with_pins = cli.json("cards", "list", "--series", "46", "--limit", "0", "--show-pins")
    assert len(with_pins["cards"]) == 20 and not with_pins["more"]
    assert all(len(c["pin"].replace(" ", "")) == 10 for c in with_pins["cards"])
    assert with_pins["cards"][0]["balance_micro"] == 5_000_000 and with_pins["cards"][0]["balance"] == "5.00"
    pin = with_pins["cards"][3]["pin"]
    found = cli.json("cards", "list", "--pin", pin)["cards"]
    assert [c["number"] for c in found] == ["46-000000003"] and found[0]["pin"] == ""

    out = cli.ok("cards", "adjust", "46-000000001", "-1.50", "--reason", "refund").stdout
    assert "5.00 -> 3.50 USD" in out
    adjusted = cli.json("cards", "adjust", "46000000002", "0.000001", "--reason", "rounding")
    assert adjusted["card"]["balance_micro"] == 5_000_001 and adjusted["card"]["balance"] == "5.000001"
    cheap = cli.json("cards", "list", "--series", "46", "--max-balance", "4")["cards"]
    assert [c["number"] for c in cheap] == ["46-000000001"]
    assert [c["number"] for c in cli.json("cards", "list", "--series", "46", "--min-balance",
                                          "5.000001")["cards"]] == ["46-000000002"]

    assert "blocked" in cli.ok("cards", "block", "46-000000001", "46-000000002").stdout
    blocked = cli.json("cards", "list", "--series", "46", "--status", "blocked")["cards"]
    assert [c["number"] for c in blocked] == ["46-000000001", "46-000000002"]
    assert cli.json("cards", "unblock", "46-000000001")["cards"][0]["status"] == "pending"
    assert cli.json("cards", "unlock", "46-000000002")["cards"][0]["failed_pins"] == 0
    shown = cli.ok("cards", "show", "46-000000001", "--show-pin").stdout
    assert "3.50 USD" in shown and "pending" in shown and with_pins["cards"][1]["pin"] in shown

    line = cli.bad("cards", "adjust", "46-000000001", "-10", "--reason", "too much")
    assert "46-000000001" in line  # FAILED_PRECONDITION: below zero
    assert cli.bad("cards", "show", "not-a-card").startswith("radcore: ")


def test_cards_activated_range_filter(cli):
    make_series(cli, 47, 5, "--initial-status", "activated")
    found = cli.json("cards", "list", "--activated-from", "2023-11-14", "--activated-to", "2023-11-14")
    assert len(found["cards"]) == 5 and found["cards"][0]["activated_at"] == "2023-11-14T22:13:20Z"
    assert cli.json("cards", "list", "--activated-to", "2023-11-13")["cards"] == []


def test_cards_export_xlsx_and_csv(cli, tmp_path):
    from openpyxl import load_workbook

    make_series(cli, 48)
    cli.ok("cards", "adjust", "48-000000001", "-1.50", "--reason", "refund")
    result = cli.ok("cards", "export", "out.xlsx", "--series", "48")
    assert "Wrote 20 cards to out.xlsx" in result.stdout
    path = tmp_path / "out.xlsx"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    book = load_workbook(path, read_only=True)  # read-only keeps the file open until close()
    try:
        rows = list(book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()
    assert {"Series", "Status", "Number", "Balance", "PIN"} <= set(rows[0]) and len(rows) == 21
    by_number = {r["Number"]: r for r in (dict(zip(rows[0], row)) for row in rows[1:])}
    assert Decimal(str(by_number["48-000000001"]["Balance"])) == Decimal("3.5")
    first = by_number["48-000000000"]
    assert first["Status"] == "pending" and len(first["PIN"].replace(" ", "")) == 10

    line = cli.bad("cards", "export", "out.xlsx", "--series", "48")
    assert "exists" in line and "--force" in line
    two_sheets = cli.json("cards", "export", "out.xlsx", "--series", "48", "--rows-per-sheet", "15", "--force")
    assert two_sheets["rows"] == 20 and two_sheets["sheets"] == 2

    summary = cli.json("cards", "export", "pending.csv", "--series", "48", "--status", "pending")
    assert summary["format"] == "csv" and summary["rows"] == 20
    with open(tmp_path / "pending.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 20 and {"Series", "Status", "Number", "PIN"} <= set(table[0])
    assert {r["Number"]: r["Balance"] for r in table}["48-000000001"] == "3.50"

    assert "cannot tell the format" in cli.bad("cards", "export", "out.txt")
    assert "ends in .csv" in cli.bad("cards", "export", "x.csv", "--format", "xlsx")
    assert "does not exist" in cli.bad("cards", "export", "nowhere/x.csv")
    # The server refuses before any byte: no file, no temp file left behind.
    cli.bad("cards", "export", "none.csv", "--series", "999")
    assert not (tmp_path / "none.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


# --- rates -------------------------------------------------------------------------------------------

def test_rates_import_bad_line_then_good_and_quote(cli, tmp_path):
    cli.ok("rates", "create-table", "deck", "--currency", "usd", "--description", "import test")
    tables = {t["name"]: t for t in cli.json("rates", "tables")["tables"]}
    assert tables["deck"]["currency"] == "USD" and tables["deck"]["rate_count"] == 0

    (tmp_path / "bad.csv").write_text("prefix,price_per_minute,interval\n33,0.02,60\n34,bad,60\n35,0.03,x\n")
    result = cli("rates", "import", "deck", "bad.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "nothing was imported" in result.stderr
    assert "price_per_minute" in result.stdout and "interval" in result.stdout
    assert " 3 " in result.stdout and " 4 " in result.stdout  # the line numbers, in the table
    assert {t["name"]: t["rate_count"] for t in cli.json("rates", "tables")["tables"]}["deck"] == 0

    partial = cli("rates", "import", "deck", "bad.csv", "--allow-partial", "--json")
    assert partial.returncode == 0
    doc = json.loads(partial.stdout)
    assert doc["imported"] == 1 and [(e["line"], e["field"]) for e in doc["errors"]] == [
        (3, "price_per_minute"), (4, "interval")]

    (tmp_path / "good.csv").write_text("prefix,price_per_minute,connection_fee\n49,0.0125,0.01\n")
    assert "Imported 1 rates" in cli.ok("rates", "import", "deck", "-", stdin=(tmp_path / "good.csv").read_text()).stdout
    listed = cli.json("rates", "list", "deck")
    by_prefix = {r["prefix"]: r for r in listed["rates"]}
    assert by_prefix["49"]["price_per_minute_micro"] == 12_500 and by_prefix["49"]["price_per_minute"] == "0.0125"
    assert "0.0125 USD" in cli.ok("rates", "list", "deck").stdout
    assert "cannot read" in cli.bad("rates", "import", "deck", "missing.csv")

    # std: "44" at 0.06/min, connection 0.01, billed 60/60. 90 s -> 120 s billed -> 0.13.
    quote = cli.json("rates", "quote", "+44", "20", "7946", "0000", "--table", "std", "--balance", "1.00",
                     "--duration", "90")
    assert quote["rate"]["prefix"] == "44" and quote["normalized_number"] == "442079460000"
    assert quote["cost_micro"] == 130_000 and quote["cost"] == "0.13" and quote["billed_seconds"] == 120
    assert quote["available_micro"] == 1_000_000 and quote["max_duration_seconds"] == 960
    text = cli.ok("rates", "quote", "442079460000", "--table", "std", "--balance", "1.00").stdout
    assert "960 s (0:16:00)" in text and "0.07 USD" in text

    make_series(cli, 49)
    by_card = cli.json("rates", "quote", "4420", "--card", "49-000000000", "--duration", "60")
    assert by_card["available_micro"] == 5_000_000 and by_card["cost_micro"] == 70_000

    cli.ok("rates", "put", "deck", "*", "0.25", "--interval", "60")
    assert "" in {r["prefix"] for r in cli.json("rates", "list", "deck")["rates"]}
    cli.ok("rates", "delete", "deck", "*")
    assert "" not in {r["prefix"] for r in cli.json("rates", "list", "deck")["rates"]}


# --- fees --------------------------------------------------------------------------------------------

def test_fees_dry_run_then_apply(cli):
    make_series(cli, 60, 10, "--initial-status", "activated", "--maintenance-fee", "0.10",
                "--maintenance-period-hours", "24")
    cli.h.env.clock.advance(2 * DAY + 3600)

    dry = cli.ok("fees", "run", "--series", "60")
    assert "Dry run" in dry.stdout and "--apply" in dry.stdout and "2.00" in dry.stdout
    assert "Fee run (dry run)" in dry.stderr and "10/10" in dry.stderr
    report = cli.json("fees", "run", "--series", "60")
    assert report["dry_run"] is True and report["periods_charged"] == 20
    assert report["fees_micro"] == 2_000_000 and report["fees"] == "2.00"
    assert cli.json("cards", "show", "60-000000000")["balance_micro"] == 5_000_000

    applied = cli.json("fees", "run", "--series", "60", "--apply")
    assert applied["dry_run"] is False and applied["cards_charged"] == 10 and applied["fees_micro"] == 2_000_000
    assert cli.json("cards", "show", "60-000000000")["balance_micro"] == 4_800_000
    assert cli.json("fees", "run", "--apply")["periods_charged"] == 0  # whole periods only: once


# --- sessions, audit, catalogs -----------------------------------------------------------------------

def test_sessions_list_and_release(cli):
    make_series(cli, 61, 2)
    store, key = cli.h.env.store, card_key(61, 1)
    with store.transaction(write=True) as txn:
        c = get_card(txn, store, key)
        c.reserved, c.open_calls, c.status = 300_000, 1, CardStatus.ACTIVATED
        put_card(txn, store, key, c)
        put_session(txn, store, session_key("gw1", "conf-1"), Session(
            card_key=key, state=SessionState.AUTHORIZED, reserved=300_000, opened_at=NOW, deadline=NOW + 600,
            price_per_minute=60_000, interval=60, min_volume=60, prefix="44", called="4420",
            conf_id="conf-1", nas="gw1"))
    sessions = cli.json("sessions", "list")["sessions"]
    assert [(s["card_number"], s["state"], s["reserved_micro"]) for s in sessions] == [
        ("61-000000001", "authorized", 300_000)]
    assert "conf-1" in cli.ok("sessions", "list", "--card", "61-000000001").stdout
    released = cli.json("sessions", "release", sessions[0]["id"])
    assert released["released_micro"] == 300_000
    assert cli.json("sessions", "list")["sessions"] == []


def test_audit_list_filters_and_changes(cli):
    make_series(cli, 62, 3)
    cli.ok("cards", "adjust", "62-000000001", "2.5", "--reason", "goodwill")
    entries = cli.json("audit", "list", "--target", "card/62-")["entries"]
    assert entries[0]["rpc"] == "UpdateCard" and entries[0]["target"] == "card/62-000000001"
    assert entries[0]["before"] == {"balance": 5_000_000}
    assert entries[0]["after"] == {"balance": 7_500_000, "reason": "goodwill"}
    assert entries[0]["at"] == "2023-11-14T22:13:20Z" and entries[0]["role"] == "admin"
    text = cli.ok("audit", "list", "--since", "2023-11-14", "--until", "2023-11-14").stdout
    assert "UpdateCard" in text and "CreateSeries" in text and "goodwill" in text
    assert cli.json("audit", "list", "--until", "2023-11-13")["entries"] == []
    assert len(cli.json("audit", "list", "--limit", "2")["entries"]) == 2


def test_catalog_commands_and_json_lists(cli):
    created = cli.json("taxes", "create", "gst", "--percent", "7.5", "--description", "GST")
    assert created["percent_ppm"] == 75_000
    assert "7.5%" in cli.ok("taxes", "list").stdout
    assert cli.json("taxes", "edit", "gst", "--percent", "10")["percent_ppm"] == 100_000
    cli.ok("taxes", "delete", "gst")
    assert "gst" not in {p["name"] for p in cli.json("taxes", "list")["profiles"]}
    make_series(cli, 63, 1, "--tax-profile", "vat")
    assert "vat" in cli.bad("taxes", "delete", "vat")  # in use: FAILED_PRECONDITION
    cli.ok("routes", "create", "prem", "--route", "0011#")
    assert cli.json("routes", "show", "prem")["route"] == "0011#"
    assert {"r1", "r2"} <= {r["id"] for r in cli.json("resellers", "list")["resellers"]}
    assert cli.json("resellers", "edit", "r1", "--name", "Reseller One")["name"] == "Reseller One"
    for args in (("rates", "tables"), ("token", "list", "--all"), ("sessions", "list", "--all"),
                 ("series", "list", "--status", "all"), ("routes", "list")):
        assert isinstance(cli.json(*args), dict)


# --- failures ----------------------------------------------------------------------------------------

def test_bad_input_exits_2_with_one_line(cli):
    make_series(cli, 50, 2)
    _, r1_secret = create_token(cli.h.env.store, "reseller", "r1", note="r1", clock=cli.h.env.clock)
    cases = [
        (("cards", "adjust", "50-000000001", "1.5"), "--reason"),                       # argparse
        (("cards", "adjust", "50-000000001", "1.1234567", "--reason", "x"), "6 decimal places"),
        (("cards", "adjust", "50-000000001", "1e3", "--reason", "x"), "not an amount"),
        (("cards", "list", "--activated-from", "yesterday"), "not a date"),
        (("series", "create", "51", "--quantity", "5", "--rate-table", "std", "--pin-length", "5"),
         "pin_length"),                                                                  # INVALID_ARGUMENT
        (("series", "create", "50", "--quantity", "5", "--rate-table", "std"), "50"),   # ALREADY_EXISTS
        (("series", "show", "999"), "999"),                                             # NOT_FOUND
        (("series", "edit", "50", "--rate-table", "eur"), "rate_table"),                # wrong currency
        (("bogus",), "invalid choice"),
        (("series",), "required"),
    ]
    for args, needle in cases:
        line = cli.bad(*args)
        assert needle in line, (args, line)
    assert "admin" in cli.bad("rates", "create-table", "x", "--currency", "USD", token=r1_secret)
    assert "series 50" in cli.bad("series", "show", "50", token=r1_secret)  # other tenant: not found
    line = cli.bad("series", "list", token="not-a-token")
    assert "invalid" in line and "not-a-token" not in line
    assert "RADCORE_TOKEN" in cli.bad("series", "list", token=None)


def test_unreachable_server_exits_1(cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = cli.bad("series", "list", server=f"127.0.0.1:{port}", code=1)
    assert line.startswith(f"radcore: cannot reach radcore at 127.0.0.1:{port}")
    assert cli.token not in line
    line = cli.bad("--server", f"127.0.0.1:{port}", "cards", "show", "45-1", "--timeout", "2", code=1)
    assert f"127.0.0.1:{port}" in line


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radcore test")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_with_ca_file(cli, tmp_path):
    from control.grpc_server import create_server, graceful_shutdown
    from radcore.config import ControlConfig

    cert, key = _self_signed(tmp_path)
    env = cli.h.env
    server, port = create_server(env.store, env.keyring, ControlConfig(tls_cert=cert, tls_key=key),
                                 address="127.0.0.1:0", clock=env.clock)
    server.start()
    try:
        tls = f"127.0.0.1:{port}"
        names = {t["name"] for t in cli.json("rates", "tables", "--tls-ca", cert, server=tls)["tables"]}
        assert names == {"std", "eur"}
        cli.ok("--tls-ca", cert, "--tls-server-name", "localhost", "taxes", "list", server=tls)
        line = cli.bad("rates", "tables", "--timeout", "5", server=tls, code=1)  # plaintext to TLS
        assert line.startswith("radcore: ") and cli.token not in line
        assert "--tls-ca" in cli.bad("rates", "tables", "--tls-ca", "missing.pem", server=tls)
    finally:
        graceful_shutdown(server, grace=1.0)


# --- in-process: parsing and help --------------------------------------------------------------------

@pytest.mark.parametrize("text, micro", [("-1.50", -1_500_000), ("5", 5_000_000), ("0.000001", 1),
                                         (".5", 500_000), ("+2.", 2_000_000), ("1.1000000", 1_100_000)])
def test_parse_amount_exact(text, micro):
    assert values.parse_amount(text, signed=True) == micro


@pytest.mark.parametrize("text", ["1.1234567", "1.0000000000000000000000000000001", "1e3", "NaN", "inf", "",
                                  "1,5", "--1", "١", "99999999999999"])
def test_parse_amount_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        values.parse_amount(text, signed=True)


def test_parse_time_and_formatting():
    assert values.parse_time("2023-11-14") == 1_699_920_000
    assert values.parse_time("2023-11-14", end_of_day=True) == 1_699_920_000 + DAY - 1
    assert values.parse_time("2023-11-14T22:13:20Z") == NOW == values.parse_time(str(NOW))
    assert values.parse_time("2023-11-14T23:13:20+01:00") == NOW and values.parse_time("none") == 0
    assert values.utc(NOW) == "2023-11-14T22:13:20Z" and values.utc(0) == ""
    assert values.exact(12_500) == "0.0125" and values.exact(-1_500_000) == "-1.50"
    assert values.money(1_239_999, "USD") == "1.23 USD" and values.percent(75_000) == "7.5%"
    assert values.parse_percent("17.5") == 175_000


def test_set_assignments():
    assert admin_series.parse_assignment("maintenance-fee=0.10") == ("maintenance_fee_micro", 100_000)
    assert admin_series.parse_assignment("maintenance_fee_micro=7") == ("maintenance_fee_micro", 7)
    assert admin_series.parse_assignment("control_panel=yes") == ("control_panel", True)
    assert admin_series.parse_assignment("expiry_date=2030-01-01") == ("expiry_date", 1_893_456_000)
    assert admin_series.parse_assignment("notes=a=b") == ("notes", "a=b")
    for bad in ("nofield=1", "quantity=-1", "max_concurrent_calls=two", "notes"):
        with pytest.raises(admin.UsageError):
            admin_series.parse_assignment(bad)


def test_every_command_has_help_with_examples():
    from control.cli import build_parser

    def leaves(parser, path=()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from leaves(child, path + (name,))

    admin_parser = build_parser()._subparsers._group_actions[0].choices["admin"]
    found = {" ".join(path): p for path, p in leaves(admin_parser)}
    assert {"series create", "cards export", "rates import", "rates quote", "fees run", "audit list",
            "token create", "taxes edit", "routes delete", "resellers create", "sessions release"} <= set(found)
    for name, parser in found.items():
        text = parser.format_help()
        assert "examples:" in text and f"radcore admin {name.split()[0]}" in text, name
        assert "--server" in text and "--json" in text, name
