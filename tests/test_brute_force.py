"""PIN guessing: the card lockout over real RADIUS, the PIN-only line throttle, and the attacker model.

1. Over a real server: N wrong PINs for a card number lock the card; during the cool-down even the
   right PIN is refused (so a guesser learns nothing from a late hit); after it the card works.
   Time is moved with RADCORE_CLOCK_FILE, never slept.
2. PIN-only dialing cannot lock a card (a wrong guess names none), so unknown PINs are throttled per
   (NAS, Calling-Station-Id): over a real server, in-process (counted, refilled with time, known
   PINs free), and the throttle's own bounds (memory, off switch).
3. `radcore.attack_model`: the figures the README quotes, checked against hand arithmetic and
   against the exact product formula on small spaces.
"""

from __future__ import annotations

import math
import time
from itertools import count

import helpers_load as hl
import helpers_prepaid as hp
import pytest

from radcore import dictionary as d
from radcore import packet
from radcore.attack_model import guessing_odds, success_probability
from radcore.config_file import load_config
from radcore.metrics import SharedMetrics
from radcore.replies import return_code
from radcore.store import CardStatus
from radcore.throttle import PinThrottle

MAX_FAILED = 3
LOCKOUT = 600
THROTTLE = 6
PIN_ONLY_PROFILE = '[profiles.cisco-pin]\nbase = "cisco"\npin_only = true\n'


@pytest.fixture
def server(tmp_path):
    pins = hl.provision(tmp_path, quantity=4, face_balance=5_000_000, initial_status=CardStatus.ACTIVATED)
    clock = tmp_path / "clock"
    clock.write_text(str(int(time.time())))
    config = hl.write_config(tmp_path, prepaid={"max_failed_pins": MAX_FAILED, "lockout_seconds": LOCKOUT,
                                                "pin_only_throttle_per_minute": THROTTLE},
                             profiles=PIN_ONLY_PROFILE, clients=[
        {"name": "gw", "network": "127.0.0.1", "secret": hl.SECRET, "profile": "cisco"},
        {"name": "pin-gw", "network": "127.0.0.3", "secret": hl.SECRET, "profile": "cisco-pin"}])
    with hl.prepaid_server(config, env={"RADCORE_CLOCK_FILE": str(clock)}) as proc:
        proc.pins, proc.clock, proc.profiles = pins, clock, load_config(config).profiles
        yield proc


_ids = count(1)


def ask(proc, user: str, pin: str, *, source: str = "127.0.0.1", calling: str = "") -> packet.Packet:
    from helpers_server import UdpClient
    data = hl.access_request(next(_ids), user, pin, calling=calling)
    with UdpClient(source) as nas:
        raw = nas.exchange(proc.auth_port, data)
    assert raw is not None, proc.log()
    return packet.decode_response(raw, data[4:20], hl.SECRET.encode())


def code_of(proc, profile: str, outcome: d.ReturnCode) -> int:
    return return_code(proc.profiles[profile], outcome)


def test_wrong_pins_lock_the_card_until_the_cool_down_ends(server):
    card, right = hl.number(1), server.pins[1]
    wrong = "0" * 10 if right != "0" * 10 else "1" * 10
    for attempt in range(1, MAX_FAILED):
        reply = ask(server, card, wrong)
        assert reply.code == d.Code.ACCESS_REJECT
        assert hl.return_code(reply) == code_of(server, "cisco", d.ReturnCode.INVALID_PASSWORD), attempt
    reply = ask(server, card, wrong)  # the N-th wrong PIN locks
    assert hl.return_code(reply) == code_of(server, "cisco", d.ReturnCode.RETRIES_EXCEEDED)
    reply = ask(server, card, right)  # the right PIN during the cool-down: still locked
    assert reply.code == d.Code.ACCESS_REJECT
    assert hl.return_code(reply) == code_of(server, "cisco", d.ReturnCode.RETRIES_EXCEEDED)
    assert ask(server, hl.number(2), server.pins[2]).code == d.Code.ACCESS_ACCEPT, "other cards unaffected"

    server.clock.write_text(str(int(server.clock.read_text()) + LOCKOUT - 1))
    assert ask(server, card, right).code == d.Code.ACCESS_REJECT
    server.clock.write_text(str(int(server.clock.read_text()) + 2))
    reply = ask(server, card, right)
    assert reply.code == d.Code.ACCESS_ACCEPT, server.log()
    [(stored, _)] = hl.read_cards(server.config.parent, [1]).values()
    assert stored.failed_pins == 0


def test_pin_only_guessing_is_throttled_per_line(server):
    unknown = iter(f"{n:010d}" for n in range(10 ** 9, 10 ** 10, 7919))
    guesses = [next(p for p in unknown if p not in server.pins.values()) for _ in range(THROTTLE + 3)]
    pin_gw = {"source": "127.0.0.3", "calling": "4420700001"}
    invalid = code_of(server, "cisco-pin", d.ReturnCode.INVALID_ACCOUNT)
    throttled = code_of(server, "cisco-pin", d.ReturnCode.RETRIES_EXCEEDED)
    codes = [hl.return_code(ask(server, pin, pin, **pin_gw)) for pin in guesses]
    assert codes == [invalid] * THROTTLE + [throttled] * 3
    # A throttled line is refused before its PIN is looked up: even a real PIN.
    assert hl.return_code(ask(server, server.pins[0], server.pins[0], **pin_gw)) == throttled
    # The operator sees the guessing in /metrics, not only in a rate-limited log line.
    assert server.wait_metric("radcore_pin_only_throttled_total", 4) == 4
    assert server.metrics()["radcore_pin_only_unknown_total"] == THROTTLE
    assert server.metrics()["radcore_pin_only_lines_forgotten_total"] == 0
    # Another line on the same gateway still gets through.
    other = {"source": "127.0.0.3", "calling": "4420700002"}
    assert ask(server, server.pins[0], server.pins[0], **other).code == d.Code.ACCESS_ACCEPT
    # One token comes back every 60 / THROTTLE seconds.
    server.clock.write_text(str(int(server.clock.read_text()) + 60 // THROTTLE))
    assert ask(server, server.pins[0], server.pins[0], **pin_gw).code == d.Code.ACCESS_ACCEPT


# ---------------------------------------------------------------------------------------------
# In-process: the wiring in CardAuthenticator and the throttle itself


@pytest.fixture
def world(tmp_path):
    w = hp.make_world(tmp_path)
    w.add_series(45, quantity=3)
    yield w
    w.store.close()


def test_unknown_pins_are_counted_and_known_pins_cost_nothing(world):
    throttle = world.handler.auth.throttle
    per_minute = world.config.prepaid.pin_only_throttle_per_minute
    right = world.pins[45][0]
    for _ in range(per_minute * 2):  # honest callers on one line: never throttled
        reply = world.access(45, 0, client="tenor-pin", user_name=right)
        assert reply[0] == d.Code.ACCESS_ACCEPT
    assert throttle.charged == 0 and len(throttle) == 0
    wrong = "9" * 10 if right != "9" * 10 else "8" * 10
    outcomes = [hp.vsa(world.access(45, 0, pin=wrong, client="tenor-pin", user_name=wrong),
                       d.H323_RETURN_CODE, d.VENDOR_QUINTUM) for _ in range(per_minute + 5)]
    assert outcomes == [str(int(d.ReturnCode.INVALID_ACCOUNT))] * per_minute + \
        [str(int(d.ReturnCode.RETRIES_EXCEEDED))] * 5
    assert (throttle.charged, throttle.throttled) == (per_minute, 5)
    world.clock.advance(60)
    assert world.access(45, 0, client="tenor-pin", user_name=right)[0] == d.Code.ACCESS_ACCEPT
    # Card-number profiles never touch the throttle: their wrong PINs lock the card instead.
    world.access(45, 1, pin=wrong)
    assert throttle.charged == per_minute


def test_token_bucket_refills_and_forgets_full_buckets():
    throttle = PinThrottle(per_minute=4)
    line = ("gw", "123")
    for _ in range(4):
        assert throttle.allow(line, 1000)
        throttle.charge(line, 1000)
    assert not throttle.allow(line, 1000) and not throttle.allow(line, 1014)
    assert throttle.allow(line, 1015)  # 60 / 4 = 15 s per token
    throttle.charge(line, 1015)
    assert not throttle.allow(line, 1015)
    assert throttle.allow(line, 1015 + 60) and len(throttle) == 0, "a refilled bucket is dropped"
    assert throttle.throttled == 3 and throttle.charged == 5


def test_throttle_memory_is_bounded_and_zero_turns_it_off():
    shared = SharedMetrics(1)
    recorder = shared.recorder(0)
    throttle = PinThrottle(per_minute=2, max_lines=100)
    throttle.attach_metrics(recorder)
    for n in range(10_000):  # a flood of made-up Calling-Station-Ids
        throttle.charge(("gw", str(n)), 5)
    assert len(throttle) == 100 and throttle.evicted == 9_900
    throttle.charge(("gw", "9999"), 5)  # the newest lines are the ones kept
    assert not throttle.allow(("gw", "9999"), 5)
    assert throttle.allow(("gw", "0"), 5), "a forgotten line only ever gets a full bucket back"
    recorder.publish()
    snap = shared.snapshot()
    assert (snap["pin_only_unknown"], snap["pin_only_throttled"], snap["pin_only_lines_forgotten"]) == \
        (10_001, 1, 9_900) == (throttle.charged, throttle.throttled, throttle.evicted)
    off = PinThrottle(per_minute=0)
    for _ in range(1000):
        off.charge(("gw", ""), 0)
        assert off.allow(("gw", ""), 0)
    assert len(off) == 0
    with pytest.raises(ValueError):
        PinThrottle(per_minute=-1)


# ---------------------------------------------------------------------------------------------
# The attacker model


def test_model_figures_for_the_default_limits():
    odds = guessing_odds(10, 5, 900, throttle_per_minute=30, cards=10_000)
    assert odds.targeted_guesses_per_day == 480          # 5 guesses per 15 minutes
    assert odds.targeted_per_day == pytest.approx(4.8e-8)
    assert odds.targeted_per_year == pytest.approx(480 * 365 / 1e10)
    assert odds.pin_only_guesses_per_day == 30 * 1440
    assert odds.pin_only_per_day == pytest.approx(1 - (1 - 1e-6) ** 43_200, rel=1e-9)
    assert odds.pin_only_per_day == pytest.approx(0.04228, abs=1e-5)
    assert odds.pin_only_expected_days_to_first_hit == pytest.approx(1e6 / 43_200)
    assert odds.pin_only_per_year > 0.9999
    text = odds.report()
    assert "480 guesses/day" in text and "43,200 guesses/day" in text


def test_model_scales_with_pin_length_lines_and_limits():
    base = guessing_odds(10, 5, 900, throttle_per_minute=30, cards=10_000)
    longer = guessing_odds(12, 5, 900, throttle_per_minute=30, cards=10_000)
    assert longer.targeted_per_day == pytest.approx(base.targeted_per_day / 100)
    many = guessing_odds(10, 5, 900, throttle_per_minute=30, cards=10_000, lines=50)
    assert many.pin_only_guesses_per_day == 50 * base.pin_only_guesses_per_day
    assert many.pin_only_per_day > base.pin_only_per_day
    unlimited = guessing_odds(10, 5, 0, throttle_per_minute=0, cards=10_000)
    assert unlimited.targeted_per_day == 1.0 and unlimited.pin_only_per_day == 1.0
    assert math.isinf(unlimited.targeted_guesses_per_day)
    with pytest.raises(ValueError):
        guessing_odds(0, 5, 900, throttle_per_minute=30, cards=1)


@pytest.mark.parametrize("space, winners, guesses", [(100, 1, 7), (100, 10, 5), (1000, 37, 60),
                                                     (50, 49, 2), (10, 3, 9)])
def test_success_probability_matches_the_exact_product_on_small_spaces(space, winners, guesses):
    miss = 1.0
    for i in range(guesses):
        miss *= max(0.0, 1 - winners / (space - i))
    exact = 1 - miss
    # exp/log1p assumes replacement: never more than the exact value, and close while g << S.
    got = success_probability(guesses, winners, space)
    assert got <= exact + 1e-12
    assert got == pytest.approx(exact, rel=guesses / space + 1e-9)


def test_model_cli_prints_the_report(capsys):
    from radcore.attack_model import main
    assert main(["--pin-length", "10", "--max-failed", "5", "--lockout", "900", "--cards", "10000"]) == 0
    assert "P(success) 4.8e-08/day" in capsys.readouterr().out
