"""Crash safety: SIGKILL the server at random moments under accounting load, many times over.

A NAS (helpers_load.Nas) runs complete prepaid calls against a real one-worker server: card
authentication (the first one activates the card and charges the activation fee), number
authorization (a reservation), Start, Interim-Update, Stop. Every reply it gets is recorded. At a
random moment (seeded, printed) the worker and then the supervisor are killed with SIGKILL, with
requests in flight and possibly a transaction being written. The store is then opened from the
test and audited, the server restarted on the same data directory, and the NAS carries on where
it was: whatever got no reply is sent again (new Identifier, growing Acct-Delay-Time), as a real
gateway would. After CYCLES kills, one last run completes every call and the server stops cleanly.

Audited after every kill and at the end, for every card, to the micro-unit:

    face balance - activation fee (if activated) - sum(CDR costs) - sum(charged on open calls) == balance
    held (reserved) == sum of the open calls' holds;  open_calls == number of open calls

and at the end additionally: every Stop that was acknowledged has its CDR, no call has two CDRs,
every CDR costs exactly what the rate says for its duration, nothing is held any more, and the
server came up on the killed store every time.
"""

from __future__ import annotations

import os
import random
import signal
import time

import helpers_load as hl
import pytest

from radcore import dictionary as d
from radcore.store import CardStatus, Session, SessionState, Store, card_key, get_card, iter_card_cdrs

CYCLES = int(os.environ.get("CRASH_CYCLES", "24"))
CARDS = 30
FACE = 200_000_000
FEE = 500_000
CALLS_PER_CYCLE = 8
SEED = int(os.environ.get("CRASH_SEED", str(int(time.time()) % 100_000)))


class Calls:
    """Makes calls; while `spawning`, each settled call starts the next one, so the load never
    pauses between kills (CALLS_PER_CYCLE chains run side by side)."""

    def __init__(self, rng: random.Random, pins: dict[int, str]):
        self.rng, self.pins = rng, pins
        self.all: list[Call] = []
        self.spawning = True

    def new(self) -> hl.Flight:
        call = Call(len(self.all), self)
        self.all.append(call)
        return call.first()


class Call:
    """One prepaid call and its five requests, each sent only once the previous one is answered."""

    def __init__(self, n: int, calls: Calls):
        rng, pins = calls.rng, calls.pins
        self.calls = calls
        self.n, self.serial = n, n % CARDS
        self.conf = f"crash-{n}"
        self.called = hl.UK_NUMBER if n % 2 else hl.US_NUMBER
        self.duration = rng.randrange(0, 400)
        self.user, self.pin = hl.number(self.serial), pins[self.serial]
        self.stop_acked = False
        self.rejected = False

    def first(self) -> hl.Flight:
        return hl.auth_flight(self.user, self.pin, tag=(self, "card"), on_ack=self.after_card)

    def after_card(self, flight):
        if flight.reply.code != d.Code.ACCESS_ACCEPT:
            self.rejected = True
            return self.next()
        return [hl.auth_flight(self.user, self.pin, called=self.called, conf_id=self.conf, tag=(self, "number"),
                               on_ack=self.after_number)]

    def after_number(self, flight):
        if flight.reply.code != d.Code.ACCESS_ACCEPT:
            self.rejected = True
            return self.next()
        return [self._acct(d.AcctStatus.START, None, self.after_start)]

    def after_start(self, flight):
        return [self._acct(d.AcctStatus.INTERIM_UPDATE, self.duration // 2, self.after_interim)]

    def after_interim(self, flight):
        return [self._acct(d.AcctStatus.STOP, self.duration, self.after_stop)]

    def after_stop(self, flight):
        self.stop_acked = True
        return self.next()

    def next(self) -> list[hl.Flight]:
        return [self.calls.new()] if self.calls.spawning else []

    def _acct(self, status, seconds, then) -> hl.Flight:
        return hl.acct_flight(self.user, status, self.conf, seconds=seconds, called=self.called,
                              tag=(self, status), on_ack=then)


def audit(directory, calls: list[Call]) -> dict:
    """Open the store as the restarted server will, read everything, check the money identities."""
    store = Store(directory / "var", map_size=1 << 30)  # raises if the store does not open cleanly
    try:
        with store.begin() as txn:
            sessions = [Session.unpack(v) for _, v in txn.cursor(db=store.sessions)]
            cards, cdrs = {}, {}
            for serial in range(CARDS):
                key = card_key(hl.SERIES, serial)
                cards[serial] = get_card(txn, store, key)
                cdrs[serial] = [c for _, c in iter_card_cdrs(txn, store, key)]
            for db in (store.cards, store.pins, store.sessions, store.cdrs, store.session_deadlines):
                sum(1 for _ in txn.cursor(db=db))  # every page readable
    finally:
        store.close()
    by_card: dict[bytes, list[Session]] = {}
    for session in sessions:
        by_card.setdefault(session.card_key, []).append(session)
    for serial, card in cards.items():
        mine = by_card.get(card_key(hl.SERIES, serial), [])
        open_ = [s for s in mine if s.state != SessionState.STOPPED]
        fee = FEE if card.status != CardStatus.PENDING else 0
        assert card.activated_at or card.status == CardStatus.PENDING
        settled = sum(c.cost for c in cdrs[serial])
        assert FACE - fee - settled - sum(s.charged for s in open_) == card.balance, (serial, card, mine)
        assert card.reserved == sum(s.reserved for s in open_) and card.reserved >= 0, (serial, card)
        assert card.open_calls == len(open_), (serial, card, open_)
        assert settled == sum(s.charged for s in mine if s.state == SessionState.STOPPED)
    all_cdrs = [c for serial in cdrs for c in cdrs[serial]]
    confs = [c.conf_id for c in all_cdrs]
    assert len(confs) == len(set(confs)), "a call has two CDRs"
    return {"cdrs": {c.conf_id: c for c in all_cdrs}, "cards": cards}


def kill(server) -> None:
    """SIGKILL the worker (the process writing LMDB) and the supervisor, and wait until both are gone."""
    victims = hl.worker_pids(server.pid) + [server.pid]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    server.proc.wait(10)
    deadline = time.monotonic() + 10
    for pid in victims[:-1]:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.005)
        else:
            pytest.fail(f"worker {pid} survived SIGKILL")


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_debit(tmp_path):
    print(f"\ncrash-safety seed {SEED} (CRASH_SEED={SEED} reproduces the schedule)")
    rng = random.Random(SEED)
    pins = hl.provision(tmp_path, quantity=CARDS, face_balance=FACE, activation_fee=FEE,
                        max_concurrent_calls=100)
    config = hl.write_config(tmp_path, workers=1, prepaid={"max_call_seconds": 600})
    calls = Calls(rng, pins)
    kills_mid_flight = 0
    with hl.Nas({hl.AUTH: 0, hl.ACCT: 0}, sockets=3, window=CALLS_PER_CYCLE, timeout=0.4, seed=SEED) as nas:
        nas.open_flights = [calls.new() for _ in range(CALLS_PER_CYCLE)]
        for cycle in range(CYCLES):
            server = hl.prepaid_server(config)
            with server:
                nas.ports = {hl.AUTH: server.auth_port, hl.ACCT: server.acct_port}
                nas.run(nas.open_flights, deadline=time.monotonic() + rng.uniform(0.02, 0.6))
                kills_mid_flight += bool(nas._owner)
                kill(server)
            nas.drain(0.05)
            audit(tmp_path, calls.all)

        calls.spawning = False
        with hl.prepaid_server(config) as server:  # the last restart: let every call finish
            nas.ports = {hl.AUTH: server.auth_port, hl.ACCT: server.acct_port}
            left = nas.run(nas.open_flights, deadline=time.monotonic() + 60)
            assert left == [], f"{len(left)} requests never answered\n{server.log()}"
            assert server.stop() == 0
            log = server.log()
    assert "Traceback" not in log, log

    calls = calls.all
    result = audit(tmp_path, calls)
    finished = [c for c in calls if not c.rejected]
    acked = [c for c in calls if c.stop_acked]
    assert len(acked) == len(finished) and len(finished) >= 0.9 * len(calls)
    for call in acked:
        cdr = result["cdrs"].get(call.conf)
        assert cdr is not None, f"acknowledged Stop of {call.conf} has no CDR"
        assert cdr.duration == call.duration
        assert cdr.cost == hl.call_cost(call.called, call.duration), call.conf
    assert set(result["cdrs"]) == {c.conf for c in acked}
    for card in result["cards"].values():
        assert card.reserved == 0 and card.open_calls == 0
    print(f"{CYCLES} kills ({kills_mid_flight} with requests in flight), {len(calls)} calls, "
          f"{len(acked)} settled, {sum(c.rejected for c in calls)} refused")
