"""The portal in a real browser: Debian's Chromium driven by Playwright, with JavaScript switched OFF
(the portal must work without it), against uvicorn on 127.0.0.1:0.

The calls on the statement are made earlier in the same test through the RADIUS handler with encoded
packets (helpers_prepaid), so this is the end-to-end path a card holder sees: dial, hang up, log in,
read the balance and the call, download the CSV, log out. A screenshot of the statement page is
saved to test-artifacts/portal-statement.png (and a phone-sized one next to it).

Without a usable browser these tests skip, unless RADCORE_REQUIRE_BROWSER=1 makes that a failure.
"""

import csv
import os
import re
from pathlib import Path

import pytest

from control.portal import create_app, start_portal_thread
from control.portal.app import LOGIN_REFUSED
from radcore import dictionary as d
from radcore.dictionary import AcctStatus, ReturnCode

from helpers_prepaid import make_world, vsa

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("RADCORE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
GENERIC = LOGIN_REFUSED.split(".")[0]


def _unavailable(reason: str):
    message = f"cannot drive Chromium with Playwright ({CHROMIUM}): {reason}"
    if os.environ.get("RADCORE_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " [RADCORE_REQUIRE_BROWSER=1]", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        _unavailable(f"playwright is not installed: {e}")
    manager = sync_playwright()
    try:
        pw = manager.start()
    except Exception as e:
        _unavailable(f"playwright did not start: {e}")
    try:
        try:
            chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        except Exception as e:
            _unavailable(str(e).splitlines()[0] if str(e) else type(e).__name__)
        yield chromium
        chromium.close()
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture
def portal(tmp_path):
    world = make_world(tmp_path)
    world.add_series(45, control_panel=True, time_zone="America/New_York", name="Travel 10")
    world.add_series(46, control_panel=False, name="No panel")
    app = create_app(world.store, world.keyring, world.config, clock=world.clock)
    server, _, port = start_portal_thread(app, "127.0.0.1:0")
    world.base = f"http://127.0.0.1:{port}"
    yield world
    server.stop()
    world.handler.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(java_script_enabled=False, accept_downloads=True,
                                  viewport={"width": 1280, "height": 900}, locale="en-US")
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.console_errors = []
    pg.on("console", lambda msg: pg.console_errors.append(msg.text) if msg.type == "error" else None)
    yield pg
    context.close()


def radius_call(world, serial, conf_id, called, seconds):
    """A call as a Cisco gateway reports it: authorize the number, Start, then Stop after `seconds`."""
    reply = world.access(45, serial, called=called, conf_id=conf_id)
    assert reply[0] == d.Code.ACCESS_ACCEPT, reply
    world.accounting(45, serial, AcctStatus.START, conf_id=conf_id, called=called)
    world.clock.advance(seconds)
    world.accounting(45, serial, AcctStatus.STOP, conf_id=conf_id, session_time=seconds)


def sign_in(page, world, number, pin):
    page.goto(world.base + "/login")
    page.get_by_label("Card number").fill(number)
    page.get_by_label("PIN").fill(pin)
    page.get_by_role("button", name="Sign in").click()


def test_holder_sees_radius_calls_downloads_csv_and_logs_out(portal, page):
    from playwright.sync_api import expect

    world = portal
    pin = world.pins[45][0]
    # Earlier in the same test, at the switch: a 95 s call to London, then a 30 s call to the US.
    radius_call(world, 0, "BRW-1", "+44 20 7946 0000", 95)
    radius_call(world, 0, "BRW-2", "14155550100", 30)

    sign_in(page, world, "45000000000", pin)  # typed without the dash
    expect(page).to_have_url(world.base + "/statement")
    # 10.00 - (0.05 + 96 s * 0.12/min) - (30 s * 0.01/min) = 9.753, shown rounded down
    expect(page.locator("#balance")).to_have_text("9.75 USD")
    expect(page.locator("#card-number")).to_have_text("45-000000000")
    expect(page.locator("#card-status")).to_have_text("Activated")
    expect(page.locator("#series-name")).to_have_text("Travel 10")
    expect(page.locator("#activated")).to_have_text("2026-09-21")

    rows = page.locator("#calls tbody tr")
    expect(rows).to_have_count(2)
    # Newest first, in New York time (EDT, UTC-4): T0 is 14:13:20 UTC.
    expect(rows.nth(0).locator("td")).to_have_text(["2026-09-21 10:14:55", "14155550100", "0:30", "30", "0.00"])
    expect(rows.nth(1).locator("td")).to_have_text(["2026-09-21 10:13:20", "442079460000", "1:35", "96", "0.24"])
    expect(page.locator("#total-calls")).to_have_text("2")
    expect(page.locator("#total-duration")).to_have_text("2:05")
    expect(page.locator("#total-billed")).to_have_text("126 s")
    expect(page.locator("#total-cost")).to_have_text("0.24 USD")
    assert pin not in page.content()

    # The stylesheet loaded under the CSP, and the browser reported no violation or failed load.
    body_bg = page.locator("body").evaluate("el => getComputedStyle(el).backgroundColor")
    assert body_bg == "rgb(244, 246, 251)"
    assert page.console_errors == []

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "portal-statement.png"), full_page=True)
    assert (ARTIFACTS / "portal-statement.png").stat().st_size > 10_000

    with page.expect_download() as info:
        page.get_by_role("link", name="Download CSV").click()
    download = info.value
    assert download.suggested_filename == "calls-45-000000000.csv"
    with open(download.path(), newline="", encoding="utf-8") as f:
        rows_csv = list(csv.reader(f))
    assert rows_csv[1:] == [
        ["2026-09-21T10:14:55-04:00", "America/New_York", "14155550100", "30", "30", "0.00", "USD"],
        ["2026-09-21T10:13:20-04:00", "America/New_York", "442079460000", "95", "96", "0.24", "USD"]]

    # The period filter is a plain GET form.
    page.get_by_label("From").fill("2026-09-22")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"/statement\?from=2026-09-22"))
    expect(page.locator(".empty")).to_have_text("No calls in this period.")
    expect(page.locator("#total-cost")).to_have_text("0.00 USD")

    # A phone: the table becomes a list, nothing scrolls sideways.
    page.goto(world.base + "/statement")
    page.set_viewport_size({"width": 390, "height": 844})
    width = page.locator("html").evaluate("el => [el.scrollWidth, el.clientWidth]")
    assert width[0] <= width[1]
    page.screenshot(path=str(ARTIFACTS / "portal-statement-mobile.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(world.base + "/login?signed_out=1")
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    page.goto(world.base + "/statement")
    expect(page).to_have_url(world.base + "/login")


def test_wrong_pin_shows_the_generic_message(portal, page):
    from playwright.sync_api import expect

    sign_in(page, portal, portal.number(45, 0), "0000000000")
    expect(page).to_have_url(portal.base + "/login")
    expect(page.get_by_role("alert")).to_contain_text(GENERIC)
    expect(page.get_by_label("PIN")).to_have_value("")  # never echoed back
    assert portal.card(45, 0).failed_pins == 1


def test_locked_card_cannot_log_in_through_either_door(portal, page):
    from playwright.sync_api import expect

    for _ in range(3):  # max_failed_pins = 3 in helpers_prepaid
        sign_in(page, portal, portal.number(45, 1), "0000000000")
        expect(page.get_by_role("alert")).to_contain_text(GENERIC)
    assert portal.card(45, 1).locked_until > portal.clock()
    sign_in(page, portal, portal.number(45, 1), portal.pins[45][1])  # the right PIN, too late
    expect(page).to_have_url(portal.base + "/login")
    expect(page.get_by_role("alert")).to_contain_text(GENERIC)
    reply = portal.access(45, 1)
    assert int(vsa(reply, d.H323_RETURN_CODE)) == ReturnCode.RETRIES_EXCEEDED


def test_series_without_the_control_panel_flag_cannot_log_in(portal, page):
    from playwright.sync_api import expect

    sign_in(page, portal, portal.number(46, 0), portal.pins[46][0])
    expect(page).to_have_url(portal.base + "/login")
    expect(page.get_by_role("alert")).to_contain_text(GENERIC)


def test_another_cards_url_shows_only_the_session_card(portal, page):
    from playwright.sync_api import expect

    radius_call(portal, 1, "THEIRS", "442079460000", 61)
    sign_in(page, portal, portal.number(45, 0), portal.pins[45][0])
    expect(page).to_have_url(portal.base + "/statement")
    other = portal.number(45, 1)
    page.goto(f"{portal.base}/statement?card={other}")
    expect(page.locator("#card-number")).to_have_text("45-000000000")
    expect(page.locator(".empty")).to_have_text("No calls yet.")
    assert other not in page.content()
    page.goto(f"{portal.base}/cards/{other}/statement")
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
    assert other not in page.content()
