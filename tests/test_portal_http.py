"""The portal over real HTTP: uvicorn on 127.0.0.1:0 in a thread (as the control process runs it),
httpx as the client. Covers what only shows on the wire: CSRF refusals, cookie flags, security and
cache headers, the per-address rate limit, one generic refusal message, sessions that expire, the
lockout shared with RADIUS, and that no URL can reach another card.
"""

import base64
import json
import logging
import os
import re
import stat
import zlib
from dataclasses import replace

import httpx
import pytest

from control.portal import create_app, start_portal_thread
from control.portal.app import LOGIN_REFUSED
from control.portal.security import load_or_create_secret
from radcore import dictionary as d
from radcore.dictionary import AcctStatus, ReturnCode
from radcore.errors import ConfigError
from radcore.store import CardStatus, card_key, put_card

from helpers_prepaid import T0, make_world, vsa

GENERIC = LOGIN_REFUSED.split(".")[0]


class Portal:
    """A world, a portal serving it on a real socket, and helpers to drive it."""

    def __init__(self, world, app):
        self.world = world
        self.server, self.thread, self.port = start_portal_thread(app, "127.0.0.1:0")
        self.base = f"http://127.0.0.1:{self.port}"
        self.clients: list[httpx.Client] = []

    def client(self) -> httpx.Client:
        c = httpx.Client(base_url=self.base, follow_redirects=False, timeout=10)
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            c.close()
        self.server.stop()


@pytest.fixture
def portal(tmp_path):
    world = make_world(tmp_path)
    world.add_series(45, control_panel=True, time_zone="Europe/London", name="Summer promo")
    world.add_series(46, control_panel=False)
    p = Portal(world, create_app(world.store, world.keyring, world.config, clock=world.clock))
    yield p
    p.close()
    world.handler.close()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(client, number, pin, *, token=None):
    """GET the form (pre-session cookie + token), then POST the credentials."""
    page = client.get("/login")
    return client.post("/login", data={"csrf": token if token is not None else csrf_of(page.text),
                                       "card_number": number, "pin": pin})


def cookie_headers(response, name):
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]


# --- CSRF ---------------------------------------------------------------------------------------------

def test_login_without_a_valid_csrf_token_is_refused_before_the_pin_is_checked(portal):
    w = portal.world
    c = portal.client()
    c.get("/login")
    r = c.post("/login", data={"card_number": w.number(45, 0), "pin": "0000000000"})
    assert r.status_code == 403 and "expired" in r.text
    r = c.post("/login", data={"csrf": "forged", "card_number": w.number(45, 0), "pin": w.pins[45][0]})
    assert r.status_code == 403 and not cookie_headers(r, "radcore_session")
    # A token is bound to its own pre-session cookie: another browser's token is worthless here.
    other = portal.client()
    stolen = csrf_of(other.get("/login").text)
    r = login(c, w.number(45, 0), w.pins[45][0], token=stolen)
    assert r.status_code == 403 and not cookie_headers(r, "radcore_session")
    # Without any pre-session cookie at all.
    r = portal.client().post("/login", data={"csrf": stolen, "card_number": w.number(45, 0),
                                             "pin": w.pins[45][0]})
    assert r.status_code == 403
    assert w.card(45, 0).failed_pins == 0


def test_logout_needs_the_session_csrf_token(portal):
    w = portal.world
    c = portal.client()
    assert login(c, w.number(45, 0), w.pins[45][0]).status_code == 303
    assert c.post("/logout", data={}).status_code == 403
    # A login-form token is signed by the same portal but made for another nonce: refused.
    assert c.post("/logout", data={"csrf": csrf_of(portal.client().get("/login").text)}).status_code == 403
    assert c.get("/statement").status_code == 200  # still signed in
    token = csrf_of(c.get("/statement").text)
    r = c.post("/logout", data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/login?signed_out=1"
    assert "Max-Age=0" in cookie_headers(r, "radcore_session")[0]
    assert c.get("/statement").headers["location"] == "/login"
    assert "You have signed out." in c.get("/login?signed_out=1").text


def test_signing_out_ends_every_copy_of_the_session_and_only_that_card(portal):
    w = portal.world
    c, other_card = portal.client(), portal.client()
    assert login(c, w.number(45, 0), w.pins[45][0]).status_code == 303
    assert login(other_card, w.number(45, 1), w.pins[45][1]).status_code == 303
    copied = portal.client()  # the same cookie in another browser: a shared computer, a stolen cookie
    copied.cookies.set("radcore_session", c.cookies["radcore_session"])
    assert copied.get("/statement").status_code == 200
    assert c.post("/logout", data={"csrf": csrf_of(c.get("/statement").text)}).status_code == 303
    assert copied.get("/statement").headers["location"] == "/login"
    assert copied.get("/statement.csv").headers["location"] == "/login"
    assert other_card.get("/statement").status_code == 200, "another card's session is not touched"
    # Signing in again works at once, in the same second, and the copy stays dead.
    assert login(c, w.number(45, 0), w.pins[45][0]).status_code == 303
    assert c.get("/statement").status_code == 200
    assert copied.get("/statement").headers["location"] == "/login"


# --- cookies and headers ---------------------------------------------------------------------------

def test_session_cookie_flags_and_contents(portal):
    w = portal.world
    c = portal.client()
    form = c.get("/login")
    [pre] = cookie_headers(form, "radcore_login")
    assert all(flag in pre for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=7200"))
    r = login(c, w.number(45, 0), w.pins[45][0])
    assert r.status_code == 303 and r.headers["location"] == "/statement"
    [session] = cookie_headers(r, "radcore_session")
    assert all(flag in session for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=1800"))
    assert "Secure" not in session  # plain HTTP on 127.0.0.1; see the secure_cookies test
    payload = session.split("=", 1)[1].split(";")[0].split(".")[1]
    doc = json.loads(zlib.decompress(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    assert set(doc) == {"k", "t", "c", "e"} and doc["k"] == card_key(45, 0).hex() and doc["t"] == T0
    assert doc["e"] == 0  # the card's sign-out count: no PIN, nothing else
    assert "Max-Age=0" in cookie_headers(r, "radcore_login")[0]  # the pre-session is spent


def test_secure_cookies_option_sets_the_secure_flag(portal, tmp_path):
    w = portal.world
    other = Portal(w, create_app(w.store, w.keyring, w.config, clock=w.clock, secure_cookies=True))
    try:
        c = other.client()
        assert "Secure" in cookie_headers(c.get("/login"), "radcore_login")[0]
    finally:
        other.close()


def test_security_headers_everywhere_and_no_store_on_pages(portal):
    w = portal.world
    c = portal.client()
    login(c, w.number(45, 0), w.pins[45][0])
    for path in ("/login", "/statement", "/statement.csv", "/static/portal.css", "/no/such/page"):
        r = c.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src" not in csp and "default-src 'none'" in csp and "'unsafe-inline'" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-content-type-options"] == "nosniff"
        expected = "public, max-age=3600" if path.startswith("/static/") else "no-store"
        assert r.headers["cache-control"] == expected, path
    assert c.get("/static/portal.css").headers["content-type"].startswith("text/css")
    assert "<script" not in c.get("/statement").text and "<script" not in c.get("/login").text


def test_store_failure_is_a_503_page_with_the_security_headers(portal):
    w = portal.world
    c = portal.client()
    login(c, w.number(45, 0), w.pins[45][0])
    w.store.close()
    r = c.get("/statement")
    assert r.status_code == 503 and "Temporarily unavailable" in r.text
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"


# --- refusals, rate limit, lockout -------------------------------------------------------------------

def test_every_refusal_shows_the_same_generic_message(portal):
    w = portal.world
    card = w.card(45, 2)
    card.status = CardStatus.BLOCKED
    with w.store.begin(write=True) as txn:
        put_card(txn, w.store, card_key(45, 2), card)
    cases = {"wrong PIN": (w.number(45, 0), "0000000000"),
             "unknown card": ("45-000000077", w.pins[45][0]),
             "malformed": ("hello", "7777000011"),
             "flag off": (w.number(46, 0), w.pins[46][0]),
             "blocked": (w.number(45, 2), w.pins[45][2])}
    bodies = {}
    for name, (number, pin) in cases.items():
        r = login(portal.client(), number, pin)
        assert r.status_code == 200 and not cookie_headers(r, "radcore_session"), name
        message = re.search(r'role="alert" id="login-error">([^<]*)<', r.text).group(1)
        bodies[name] = message
        assert pin not in r.text, name
    assert set(bodies.values()) == {LOGIN_REFUSED.replace("'", "&#39;")}


def test_failed_logins_are_rate_limited_per_address(portal):
    w = portal.world
    c = portal.client()
    for i in range(10):
        r = login(c, f"45-0000001{i:02d}", "1234567890")
        assert r.status_code == 200 and GENERIC in r.text
    r = login(c, w.number(45, 0), w.pins[45][0])  # even the right PIN waits
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert "Too many attempts" in r.text and "try again" in r.text
    assert r.headers["cache-control"] == "no-store"
    assert w.card(45, 0).failed_pins == 0  # refused before the PIN was looked at
    w.clock.advance(60)
    assert login(c, w.number(45, 0), w.pins[45][0]).status_code == 303


def test_lockout_is_shared_with_radius_and_ends_after_the_cool_down(portal):
    w = portal.world
    c = portal.client()
    for _ in range(2):  # N-1 = 2 wrong PINs at the portal ...
        assert GENERIC in login(c, w.number(45, 0), "1111111111").text
    assert w.card(45, 0).failed_pins == 2
    reply = w.access(45, 0, pin="2222222222")  # ... and the Nth at the switch locks the card
    assert int(vsa(reply, d.H323_RETURN_CODE)) == ReturnCode.RETRIES_EXCEEDED
    assert w.card(45, 0).locked_until == T0 + 600
    r = login(c, w.number(45, 0), w.pins[45][0])
    assert r.status_code == 200 and GENERIC in r.text and not cookie_headers(r, "radcore_session")
    w.clock.advance(600)
    assert login(c, w.number(45, 0), w.pins[45][0]).status_code == 303


def test_portal_lockout_is_audited_and_blocks_radius(portal):
    w = portal.world
    c = portal.client()
    for _ in range(3):
        login(c, w.number(45, 1), "1111111111")
    with w.store.begin() as txn:
        entries = [json.loads(bytes(v)) for _, v in txn.cursor(db=w.store.audit)]
    assert [(e["actor"], e["rpc"], e["target"], e["after"]["client"]) for e in entries] == [
        ("portal", "PortalLogin", "card/45-000000001", "127.0.0.1")]
    reply = w.access(45, 1)
    assert reply[0] == d.Code.ACCESS_REJECT
    assert int(vsa(reply, d.H323_RETURN_CODE)) == ReturnCode.RETRIES_EXCEEDED


# --- sessions and isolation -----------------------------------------------------------------------------

def test_another_cards_url_never_shows_its_data(portal):
    w = portal.world
    w.access(45, 1, called="442079460000", conf_id="OTHER")
    w.accounting(45, 1, AcctStatus.STOP, conf_id="OTHER", session_time=77)
    c = portal.client()
    login(c, w.number(45, 0), w.pins[45][0])
    other = w.number(45, 1)
    for path in (f"/statement?card={other}",
                 f"/statement?card_number={other}&number={other}&key={card_key(45, 1).hex()}"):
        r = c.get(path)
        assert r.status_code == 200 and w.number(45, 0) in r.text and other not in r.text
        assert "1:17" not in r.text
    for path in (f"/cards/{other}", f"/statement/{other}", f"/card/{card_key(45, 1).hex()}/statement.csv"):
        assert c.get(path).status_code == 404
    csv_lines = c.get(f"/statement.csv?card={other}").text.splitlines()
    assert len(csv_lines) == 1 and csv_lines[0].startswith("Date and time,")  # our card: no calls yet
    # A session cookie cannot be edited to name another card.
    value = c.cookies["radcore_session"]
    c.cookies.set("radcore_session", value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
    assert c.get("/statement").headers["location"] == "/login"


def test_sessions_expire_when_idle_and_after_their_lifetime(portal):
    w = portal.world
    c = portal.client()
    login(c, w.number(45, 0), w.pins[45][0])
    w.clock.advance(29 * 60)
    assert c.get("/statement").status_code == 200  # re-signed: the idle clock restarts
    w.clock.advance(29 * 60)
    assert c.get("/statement").status_code == 200
    w.clock.advance(31 * 60)
    assert c.get("/statement").status_code == 303
    login(c, w.number(45, 0), w.pins[45][0])
    for _ in range(12 * 3 + 1):  # active all day: 20-minute steps past the 12-hour lifetime
        w.clock.advance(20 * 60)
        last = c.get("/statement")
    assert last.status_code == 303 and last.headers["location"] == "/login"


def test_blocking_a_card_ends_its_session(portal):
    w = portal.world
    c = portal.client()
    login(c, w.number(45, 0), w.pins[45][0])
    card = w.card(45, 0)
    card.status = CardStatus.BLOCKED
    with w.store.begin(write=True) as txn:
        put_card(txn, w.store, card_key(45, 0), card)
    assert c.get("/statement").headers["location"] == "/login"


def test_csv_download_and_no_pin_anywhere(portal, caplog):
    caplog.set_level(logging.DEBUG)
    w = portal.world
    pin = w.pins[45][0]
    w.access(45, 0, called="442079460000", conf_id="CSV1")
    w.accounting(45, 0, AcctStatus.START, conf_id="CSV1")
    w.clock.advance(95)
    w.accounting(45, 0, AcctStatus.STOP, conf_id="CSV1", session_time=95)
    c = portal.client()
    seen = [login(c, w.number(45, 0).replace("-", ""), pin)]
    seen.append(c.get("/statement"))
    seen.append(c.get("/statement?from=2026-09-21&to=2026-09-21"))
    csv_response = c.get("/statement.csv?from=2026-09-21")
    seen.append(csv_response)
    assert csv_response.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv_response.headers["content-disposition"] == (
        'attachment; filename="calls-45-000000000-from-2026-09-21.csv"')
    assert csv_response.text.splitlines()[1] == (
        "2026-09-21T15:13:20+01:00,Europe/London,442079460000,95,96,0.24,USD")
    page = seen[1].text
    assert "9.75 USD" in page and "0.24" in page and "Summer promo" in page
    for r in seen:
        assert pin not in r.text and pin not in str(r.url) and pin not in str(r.headers)
    assert pin not in caplog.text and "signed in" in caplog.text


def test_secret_file_is_created_private_once_and_a_configured_one_must_exist(portal, tmp_path):
    w = portal.world
    path = os.path.join(w.config.server.data_dir, "portal.secret")
    assert os.path.exists(path)  # the fixture's app created it
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as f:
        created = f.read()
    # Hex text, so the whitespace-stripping reader can never shorten it (raw bytes could end in b"\n").
    assert len(created) == 64 and bytes.fromhex(created.decode()) and load_or_create_secret(w.config) == created
    missing = replace(w.config, control=replace(w.config.control, portal_secret_file=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="does not exist"):
        load_or_create_secret(missing)
    loose = tmp_path / "loose.secret"
    loose.write_bytes(os.urandom(32))
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_secret(replace(w.config, control=replace(w.config.control, portal_secret_file=str(loose))))
    # Two apps with the same data directory accept each other's sessions (several control processes).
    c = portal.client()
    login(c, w.number(45, 0), w.pins[45][0])
    twin = Portal(w, create_app(w.store, w.keyring, w.config, clock=w.clock))
    try:
        t = twin.client()
        t.cookies.set("radcore_session", c.cookies["radcore_session"])
        assert t.get("/statement").status_code == 200
    finally:
        twin.close()


def test_portal_thread_reports_its_port_refuses_a_busy_one_and_stops(portal):
    w = portal.world
    assert portal.port > 0 and portal.thread.is_alive()
    app = create_app(w.store, w.keyring, w.config, clock=w.clock)
    with pytest.raises(OSError):
        start_portal_thread(app, f"127.0.0.1:{portal.port}")
    portal.server.stop()
    assert not portal.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(portal.base + "/login", timeout=2)
