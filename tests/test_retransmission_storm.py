"""Retransmission storm: 10,000 calls, every accounting packet repeated, reordered and delayed.

Each call (on one of 500 cards, to a UK or a US number, 0..900 s long) has a Start, an Interim
(half-way) and a Stop. Every one of those is sent 1 to 5 times, each extra copy either verbatim
(same bytes from the same socket: the duplicate cache's case) or re-identified (new Identifier,
Acct-Delay-Time raised: the settlement's case); 2% of copies are lost on the way, so some requests
are only answered after the NAS's timeout retransmission. All copies of all calls are shuffled together, so
a Stop often arrives before its Start, an Interim after its Stop, and a copy seconds after the
original was answered. The NAS keeps a window of unanswered requests over several sockets and
sends again whatever got no answer.

Afterwards every card's balance must equal an oracle computed here from the call durations alone,
exactly; every call has exactly one CDR at its price; nothing is held. (One worker with batches of
up to 1024 requests, since the batch's fsync dominates; on the 2-core test machine the run takes
about half a minute. STORM_CALLS makes it shorter or longer.)
"""

from __future__ import annotations

import os
import random
import time

import helpers_load as hl
import pytest

from radcore import dictionary as d
from radcore.store import CardStatus

CALLS = int(os.environ.get("STORM_CALLS", "10000"))
CARDS = 500
FACE = 1_000_000_000
SEED = 20251125
LOSS = 0.02  # share of copies the "network" drops; a leg whose copies are all lost is retransmitted


def oracle_cost(called: str, seconds: int) -> int:
    """The price list by hand (helpers_load UK and US), independent of radcore.rating."""
    if called == hl.UK_NUMBER:  # 0.05 connection, 0.12/min, 60 s minimum, then 6 s steps
        if seconds <= 0:
            return 0
        billed = 60 if seconds <= 60 else 60 + -(-(seconds - 60) // 6) * 6
        return 50_000 + billed * 2_000
    if seconds <= 3:  # US: 0.01/min per second, 3 s free
        return 0
    return -(-seconds * 10_000 // 60)


def storm_events(rng: random.Random) -> tuple[list[tuple[str, hl.Flight]], list[tuple[int, str, int]]]:
    calls = []
    events: list[tuple[str, hl.Flight]] = []
    for n in range(CALLS):
        serial, called = n % CARDS, (hl.UK_NUMBER, hl.US_NUMBER)[rng.randrange(2)]
        duration = rng.choice([0, 1, 3, 4, 59, 60, 61, 66, 67]) if n % 10 == 0 else rng.randrange(0, 901)
        calls.append((serial, called, duration))
        user, conf = hl.number(serial), f"storm-{n}"
        for status, seconds in ((d.AcctStatus.START, None),
                                (d.AcctStatus.INTERIM_UPDATE, duration // 2),
                                (d.AcctStatus.STOP, duration)):
            flight = hl.acct_flight(user, status, conf, seconds=seconds, called=called, tag=(n, status))
            copies = rng.randrange(1, 6)
            events.append(("lost" if rng.random() < LOSS else "new", flight))
            events += [("lost" if rng.random() < LOSS else rng.choice(("verbatim", "new")), flight)
                       for _ in range(copies - 1)]
    rng.shuffle(events)
    return events, calls


@pytest.mark.slow
def test_retransmission_storm_settles_every_call_exactly_once(tmp_path):
    rng = random.Random(SEED)
    hl.provision(tmp_path, quantity=CARDS, face_balance=FACE, initial_status=CardStatus.ACTIVATED,
                 with_pins=False)
    events, calls = storm_events(rng)
    # Large batches: each is one fsync, and the fsync, not the CPU, bounds a storm like this one.
    config = hl.write_config(tmp_path, workers=1, batch_max=1024)
    started = time.monotonic()
    with hl.prepaid_server(config) as server:
        with hl.Nas({hl.AUTH: server.auth_port, hl.ACCT: server.acct_port}, sockets=8, window=1024,
                    timeout=2.0, seed=SEED) as nas:
            left = nas.blast(events, deadline=started + 90)
            left = nas.run(left, deadline=started + 100)
            assert left == [], f"{len(left)} requests never answered\n{server.log()[-3000:]}"
            sent, retransmits, stale, lost = nas.sent, nas.retransmits, nas.stale, nas.lost
        metrics = server.metrics()
    elapsed = time.monotonic() - started
    verbatim = sum(how == "verbatim" for how, _ in events)
    print(f"\nstorm: {CALLS} calls, {len(events)} copies scheduled ({verbatim} verbatim, {lost} lost), "
          f"{sent} datagrams sent ({retransmits} timeout retransmissions), {stale} stale replies ignored, "
          f"{metrics.get('radcore_duplicates_total', 0):.0f} answered from the duplicate cache, "
          f"{elapsed:.1f} s")
    assert metrics.get("radcore_duplicates_total", 0) > 0 and retransmits > 0

    cards = hl.read_cards(tmp_path, range(CARDS))
    expected = {serial: FACE for serial in range(CARDS)}
    per_call = {}
    for n, (serial, called, duration) in enumerate(calls):
        expected[serial] -= oracle_cost(called, duration)
        per_call[f"storm-{n}"] = (called, duration)
    wrong = {s: (cards[s][0].balance, expected[s]) for s in range(CARDS) if cards[s][0].balance != expected[s]}
    assert not wrong, f"{len(wrong)} cards differ from the oracle, e.g. {list(wrong.items())[:5]}"
    cdrs = [c for serial in range(CARDS) for c in cards[serial][1]]
    assert sorted(c.conf_id for c in cdrs) == sorted(per_call), "every call exactly one CDR"
    for cdr in cdrs:
        called, duration = per_call[cdr.conf_id]
        assert (cdr.duration, cdr.cost) == (duration, oracle_cost(called, duration)), cdr
    for card, _ in cards.values():
        assert (card.reserved, card.open_calls) == (0, 0)
