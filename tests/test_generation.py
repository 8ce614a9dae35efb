import itertools
import json
import os
import sys
import threading

import pytest

import radcore.generation as generation
from helpers_store import NOW, add_rate_table, new_series, open_store
from radcore.clock import FixedClock
from radcore.errors import Conflict, Invalid, NotFound, StoreError
from radcore.generation import (generate_series, incomplete_generations, resume_generation,
                                rollback_generation, validate_new_series)
from radcore.keys import KeyRing
from radcore.store import (CardStatus, Reseller, RoutingPlan, SeriesStatus, TaxProfile, card_key, get_card,
                           get_series, get_version, iter_series_cards, put_series, series_key)


class Stop(Exception):
    pass


def stop_at(done_count=None):
    """A progress callback that interrupts once `done_count` cards are done (or at the first call)."""
    def progress(done, total):
        if done_count is None or done == done_count:
            raise Stop
    return progress


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "db")
    add_rate_table(s, "std")
    add_rate_table(s, "eur", currency="EUR")
    with s.transaction(write=True) as txn:
        txn.put(b"vat", TaxProfile("vat", 200_000).to_bytes(), db=s.tax_profiles)
        txn.put(b"a", RoutingPlan("a", "0011#").to_bytes(), db=s.routing_plans)
        txn.put(b"r1", Reseller("r1", "Reseller One").to_bytes(), db=s.resellers)
    yield s
    s.close()


@pytest.fixture
def ring(tmp_path):
    return KeyRing.load_or_create(str(tmp_path / "keys.json"))


@pytest.fixture
def clock():
    return FixedClock(NOW)


def count(store, db):
    with store.transaction() as txn:
        return txn.stat(db)["entries"]


def cards_of(store, number):
    with store.transaction() as txn:
        return list(iter_series_cards(txn, store, number))


def check_cards(store, ring, number, expected_serials, pin_length):
    """Every card has a unique PIN of the right length that decrypts, and the index maps back."""
    cards = cards_of(store, number)
    assert [serial for serial, _ in cards] == list(expected_serials)
    pins = set()
    with store.transaction() as txn:
        for serial, card in cards:
            key = card_key(number, serial)
            pin = ring.decrypt_pin(card.pin_blob, key)
            assert len(pin) == pin_length and pin.isdigit()
            assert ring.pin_digest(pin) == card.pin_digest
            assert txn.get(card.pin_digest, db=store.pins) == key
            pins.add(pin)
    assert len(pins) == len(cards)
    return cards


def test_generate_series(store, ring, clock):
    calls = []
    with store.transaction() as txn:
        version = get_version(txn, store)
    series = generate_series(store, ring, new_series(45, quantity=5000, pin_length=10, tax_profile="vat",
                                                     routing_plan="a", reseller="r1"),
                             clock=clock, chunk_size=1000, progress=lambda d, t: calls.append((d, t)))
    assert series.complete and series.generated == 5000 and series.created_at == NOW
    assert calls == [(1000, 5000), (2000, 5000), (3000, 5000), (4000, 5000), (5000, 5000)]
    cards = check_cards(store, ring, 45, range(5000), 10)
    assert count(store, store.pins) == 5000 and count(store, store.cards) == 5000
    card = cards[0][1]
    assert card.status == CardStatus.PENDING and card.balance == 5_000_000
    assert card.activated_at == 0 and card.expires_at == 0 and card.fees_paid_until == 0
    assert incomplete_generations(store) == [] and count(store, store.generation) == 0
    with store.transaction() as txn:
        assert get_series(txn, store, 45) == series
        assert get_version(txn, store) == version + 1


def test_initially_activated_with_offset_and_expiry(store, ring, clock):
    series = new_series(7, quantity=30, pin_length=12, first_serial=99_999_970,
                        initial_status=CardStatus.ACTIVATED, expiry_date=NOW + 100 * 86_400,
                        expiry_period_days=30)
    generate_series(store, ring, series, clock=clock, chunk_size=7)
    cards = check_cards(store, ring, 7, range(99_999_970, 100_000_000), 12)
    for _, card in cards:
        assert card.status == CardStatus.ACTIVATED and card.activated_at == NOW
        assert card.expires_at == NOW + 30 * 86_400 and card.fees_paid_until == NOW
    generate_series(store, ring, new_series(8, quantity=3, initial_status=CardStatus.ACTIVATED,
                                            expiry_date=NOW + 86_400, expiry_period_days=30), clock=clock)
    assert {c.expires_at for _, c in cards_of(store, 8)} == {NOW + 86_400}
    generate_series(store, ring, new_series(9, quantity=3, expiry_date=NOW + 86_400), clock=clock)
    assert {(c.status, c.expires_at) for _, c in cards_of(store, 9)} == {(CardStatus.PENDING, NOW + 86_400)}


def test_interrupted_then_resumed(store, ring, clock):
    with pytest.raises(Stop):
        generate_series(store, ring, new_series(45, quantity=2000), clock=clock, chunk_size=400,
                        progress=stop_at(2 * 400))
    with store.transaction() as txn:
        partial = get_series(txn, store, 45)
    assert partial.generated == 800 and not partial.complete
    assert incomplete_generations(store) == [45]
    check_cards(store, ring, 45, range(800), 10)
    assert count(store, store.pins) == 800
    done = resume_generation(store, ring, 45, clock=clock, chunk_size=300)
    assert done.complete and incomplete_generations(store) == []
    check_cards(store, ring, 45, range(2000), 10)
    assert resume_generation(store, ring, 45, clock=clock) == done  # idempotent once complete
    with pytest.raises(NotFound):
        resume_generation(store, ring, 46, clock=clock)


def test_rollback_removes_everything(store, ring, clock):
    generate_series(store, ring, new_series(44, quantity=50), clock=clock)  # a neighbour that must survive
    with pytest.raises(Stop):
        generate_series(store, ring, new_series(45, quantity=3000), clock=clock, chunk_size=500,
                        progress=stop_at(1500))
    progress = []
    deleted = rollback_generation(store, 45, chunk_size=400, progress=lambda d, t: progress.append((d, t)))
    assert deleted == 1500
    assert progress[-1] == (1500, 1500)
    assert cards_of(store, 45) == [] and count(store, store.pins) == 50
    with store.transaction() as txn:
        assert get_series(txn, store, 45) is None
    assert incomplete_generations(store) == []
    check_cards(store, ring, 44, range(50), 10)
    with pytest.raises(Conflict):
        rollback_generation(store, 44)  # complete series are deleted through the series API
    with pytest.raises(NotFound):
        rollback_generation(store, 45)
    generate_series(store, ring, new_series(45, quantity=10), clock=clock)  # the number is free again


def test_interrupted_rollback_leaves_a_resumable_prefix(store, ring, clock):
    with pytest.raises(Stop):
        generate_series(store, ring, new_series(45, quantity=1000), clock=clock, chunk_size=300,
                        progress=stop_at(900))
    with pytest.raises(Stop):
        rollback_generation(store, 45, chunk_size=250, progress=stop_at())
    with store.transaction() as txn:
        assert get_series(txn, store, 45).generated == 650
    check_cards(store, ring, 45, range(650), 10)
    resume_generation(store, ring, 45, clock=clock, chunk_size=300)
    check_cards(store, ring, 45, range(1000), 10)


def test_pin_collisions_draw_again(store, ring, clock, monkeypatch):
    generate_series(store, ring, new_series(1, quantity=1), clock=clock)
    existing = ring.decrypt_pin(cards_of(store, 1)[0][1].pin_blob, card_key(1, 0))

    class Scripted:
        values = itertools.chain([int(existing), 5, 5, 5, 6, 7, 7, 8], itertools.count(100))

        def randbelow(self, n):
            return next(self.values)

    monkeypatch.setattr(generation, "secrets", Scripted())
    generate_series(store, ring, new_series(2, quantity=4), clock=clock, chunk_size=2)
    pins = [ring.decrypt_pin(c.pin_blob, card_key(2, s)) for s, c in cards_of(store, 2)]
    # PINs are handed out in digest order, so which serial gets which is not the draw order.
    assert sorted(pins) == ["0000000005", "0000000006", "0000000007", "0000000008"]
    check_cards(store, ring, 2, range(4), 10)


def test_exhausted_pin_draws_roll_the_chunk_back(store, ring, clock, monkeypatch):
    class Always:
        def randbelow(self, n):
            return 42

    monkeypatch.setattr(generation, "secrets", Always())
    with pytest.raises(StoreError, match="no unique 10-digit PIN"):
        generate_series(store, ring, new_series(3, quantity=5), clock=clock, chunk_size=5)
    with store.transaction() as txn:
        assert get_series(txn, store, 3).generated == 0
    assert cards_of(store, 3) == [] and count(store, store.pins) == 0
    assert incomplete_generations(store) == [3]


@pytest.mark.parametrize("overrides,field", [
    (dict(number=0), "number"), (dict(number=100_000), "number"), (dict(number="45"), "number"),
    (dict(quantity=0), "quantity"), (dict(quantity=100_000_001), "quantity"),
    (dict(first_serial=99_999_990, quantity=11), "quantity"), (dict(first_serial=-1), "first_serial"),
    (dict(pin_length=7), "pin_length"), (dict(pin_length=17), "pin_length"),
    (dict(pin_length=8, quantity=10_000_001), "pin_length"),
    (dict(face_balance=-1), "face_balance"), (dict(face_balance=1.5), "face_balance"),
    (dict(activation_fee=-1), "activation_fee"), (dict(activation_fee=5_000_001), "activation_fee"),
    (dict(maintenance_fee=-1), "maintenance_fee"),
    (dict(maintenance_fee=100, maintenance_period_hours=0), "maintenance_period_hours"),
    (dict(max_concurrent_calls=0), "max_concurrent_calls"),
    (dict(max_concurrent_calls=70_000), "max_concurrent_calls"),
    (dict(rate_table=""), "rate_table"), (dict(rate_table="missing"), "rate_table"),
    (dict(rate_table="eur"), "rate_table"),  # currency differs from the series
    (dict(rate_table="a\x00b"), "rate_table"),
    (dict(tax_profile="nope"), "tax_profile"), (dict(routing_plan="nope"), "routing_plan"),
    (dict(reseller="nope"), "reseller"),
    (dict(initial_status=CardStatus.BLOCKED), "initial_status"),
    (dict(status=SeriesStatus.DELETED), "status"),
    (dict(currency="usd"), "currency"), (dict(time_zone="Mars/Olympus"), "time_zone"),
    (dict(expiry_date=NOW - 1), "expiry_date"), (dict(expiry_period_days=-1), "expiry_period_days"),
    (dict(control_panel="yes"), "control_panel"),
])
def test_invalid_inputs(store, ring, clock, overrides, field):
    with pytest.raises(Invalid) as e:
        generate_series(store, ring, new_series(**{"number": 45, **overrides}), clock=clock)
    assert e.value.field == field
    assert count(store, store.series) == 0 and count(store, store.cards) == 0


def test_invalid_chunk_size(store, ring, clock):
    with pytest.raises(Invalid) as e:
        generate_series(store, ring, new_series(), clock=clock, chunk_size=0)
    assert e.value.field == "chunk_size"


def test_number_taken(store, ring, clock):
    generate_series(store, ring, new_series(45, quantity=3), clock=clock)
    with pytest.raises(Conflict, match="45"):
        generate_series(store, ring, new_series(45, quantity=3), clock=clock)


def test_pin_space_counts_existing_pins(store, ring, clock):
    generate_series(store, ring, new_series(1, quantity=5000, pin_length=8), clock=clock, chunk_size=5000)
    with store.transaction() as txn:
        validate_new_series(txn, store, new_series(2, quantity=10_000_000 - 5000, pin_length=8), now=NOW)
        with pytest.raises(Invalid, match="5,000 existing") as e:
            validate_new_series(txn, store, new_series(2, quantity=10_000_000 - 4999, pin_length=8), now=NOW)
    assert e.value.field == "pin_length"


def test_concurrent_resumers_never_duplicate(store, ring, clock):
    """A second resumer that commits first makes the other re-plan instead of writing a serial twice."""
    with pytest.raises(Stop):
        generate_series(store, ring, new_series(45, quantity=100), clock=clock, chunk_size=10,
                        progress=stop_at())
    original = generation._prepare_chunk
    raced = []

    def prepare_then_race(*args):
        batch = original(*args)
        if not raced:
            raced.append(True)
            resume_generation(store, ring, 45, clock=clock, chunk_size=25)  # finishes the series
        return batch

    generation._prepare_chunk = prepare_then_race
    try:
        series = resume_generation(store, ring, 45, clock=clock, chunk_size=10)
    finally:
        generation._prepare_chunk = original
    assert series.complete
    check_cards(store, ring, 45, range(100), 10)
    assert count(store, store.pins) == 100


def test_incomplete_series_record_is_marked(store, ring, clock):
    with pytest.raises(Stop):
        generate_series(store, ring, new_series(45, quantity=20), clock=clock, chunk_size=5,
                        progress=stop_at())
    with store.transaction() as txn:
        series = get_series(txn, store, 45)
        marker = json.loads(txn.get(series_key(45), db=store.generation))
    assert not series.complete and marker["started_at"] == NOW
    with store.transaction(write=True) as txn:
        series.generated = 20  # simulate a bug: complete record but generation marker still there
        put_series(txn, store, series)
    with pytest.raises(Conflict):
        rollback_generation(store, 45)
    with store.transaction() as txn:
        assert get_card(txn, store, card_key(45, 0)) is not None


# --- the series-wide PIN pool and the low-priority generating thread ---------------------------------

def digests_in_serial_order(store, number):
    return [card.pin_digest for _, card in cards_of(store, number)]


def test_pins_ascend_in_digest_order_across_the_whole_series(store, ring, clock):
    """One sorted run for the whole series: each chunk continues where the previous one stopped, so
    the `pins` index is swept once (the reason for the pool)."""
    generate_series(store, ring, new_series(45, quantity=3000), clock=clock, chunk_size=200)
    check_cards(store, ring, 45, range(3000), 10)
    digests = digests_in_serial_order(store, 45)
    assert digests == sorted(digests) and len(set(digests)) == 3000


@pytest.fixture
def draws(monkeypatch) -> list[int]:
    """The sizes of the PIN pool's draws, in order."""
    seen: list[int] = []
    original = generation._PinPool._draw

    def counting(self, count):
        seen.append(count)
        return original(self, count)

    monkeypatch.setattr(generation._PinPool, "_draw", counting)
    return seen


def test_control_plane_creation_keeps_one_pool(store, ring, clock, draws):
    """create_series yields between chunks without losing the pool: one draw for the whole series."""
    from control import series as series_ops
    from control.auth import LOCAL
    steps = list(series_ops.create_series(store, ring, LOCAL, new_series(46, quantity=2500), clock=clock,
                                          chunk_size=500))
    assert [(s.done, s.total) for s in steps] == [(500, 2500), (1000, 2500), (1500, 2500), (2000, 2500),
                                                  (2500, 2500)]
    assert draws == [2500]
    digests = digests_in_serial_order(store, 46)
    assert digests == sorted(digests)
    check_cards(store, ring, 46, range(2500), 10)


def test_resume_draws_only_the_remaining_cards(store, ring, clock, draws):
    with pytest.raises(Stop):
        generate_series(store, ring, new_series(45, quantity=2000), clock=clock, chunk_size=300,
                        progress=stop_at(600))
    assert draws == [2000]
    done = resume_generation(store, ring, 45, clock=clock, chunk_size=300)
    assert done.complete and draws == [2000, 1400]
    check_cards(store, ring, 45, range(2000), 10)
    digests = digests_in_serial_order(store, 45)
    assert digests[:600] == sorted(digests[:600]) and digests[600:] == sorted(digests[600:])
    assert count(store, store.pins) == 2000


def test_pool_rejects_duplicate_draws_and_keeps_digest_order(ring, monkeypatch):
    class Repeating:  # every value twice, then again later: 1, 1, 2, 2, ..., and 1..5 once more
        values = itertools.chain(*((v, v) for v in range(1, 16)), range(1, 6), itertools.count(1000))

        def randbelow(self, n):
            return next(self.values)

    monkeypatch.setattr(generation, "secrets", Repeating())
    pool = generation._PinPool(ring, 10, 20)
    taken = [pool.take() for _ in range(20)]
    pins = [pin for pin, _ in taken]
    assert len(set(pins)) == 20
    assert set(pins) == {str(v).zfill(10) for v in [*range(1, 16), *range(1000, 1005)]}
    assert [d for _, d in taken] == sorted(ring.pin_digest(p) for p in pins)
    assert all(ring.pin_digest(pin) == digest for pin, digest in taken)


def test_pool_orders_by_the_full_digest_when_prefixes_tie(ring):
    """The sort key holds only a digest prefix; equal prefixes are ordered by the whole digest."""
    class SharedPrefix:
        def pin_digest(self, pin):
            return b"\x01" * 8 + ring.pin_digest(pin)[:24]

    keyring = SharedPrefix()
    pool = generation._PinPool(keyring, 10, 300)
    taken = [pool.take() for _ in range(300)]
    assert [d for _, d in taken] == sorted({keyring.pin_digest(p) for p, _ in taken})


def test_exhausted_pool_draw_is_bounded(ring, monkeypatch):
    class Always:
        calls = 0

        def randbelow(self, n):
            Always.calls += 1
            return 7

    monkeypatch.setattr(generation, "secrets", Always())
    pool = generation._PinPool(ring, 10, 4)
    assert pool.take() == ("0000000007", ring.pin_digest("0000000007"))
    assert Always.calls == 4 * generation.MAX_PIN_DRAWS  # gave up, short, instead of hanging


def test_pool_memory_is_compact(ring):
    """200,000 PINs: ~50 bytes each retained, bounded peak (tuples of str and bytes would be ~250)."""
    import tracemalloc
    tracemalloc.start()
    try:
        pool = generation._PinPool(ring, 10, 200_000)
        pool.take()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pool.order) == 200_000
    assert retained < 12 << 20, retained
    assert peak < 20 << 20, peak


@pytest.mark.skipif(not hasattr(os, "setpriority") or not sys.platform.startswith("linux"),
                    reason="per-thread niceness is Linux only")
def test_generation_runs_on_a_lower_priority_thread(store, ring, clock, monkeypatch):
    seen = []
    original = generation._prepare_chunk

    def recording(*args):
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return original(*args)

    writes = []
    write = generation._write_chunk

    def recording_write(*args):
        tid = threading.get_native_id()
        writes.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return write(*args)

    monkeypatch.setattr(generation, "_prepare_chunk", recording)
    monkeypatch.setattr(generation, "_write_chunk", recording_write)
    me = threading.get_native_id()
    mine = os.getpriority(os.PRIO_PROCESS, me)
    generate_series(store, ring, new_series(45, quantity=50), clock=clock, chunk_size=10)
    # PIN draws and encryption on one helper thread, niced; the writes (under the writer lock) on the
    # caller's thread at its own priority, so a busy machine cannot stretch a lock hold.
    assert len(seen) == 5 and len({tid for tid, _ in seen}) == 1 and seen[0][0] != me
    assert {nice for _, nice in seen} == {min(19, mine + generation.GENERATION_NICE)}
    assert writes == [(me, mine)] * 5
    assert os.getpriority(os.PRIO_PROCESS, me) == mine


def test_priority_refused_is_not_an_error(store, ring, clock, monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    generate_series(store, ring, new_series(45, quantity=30), clock=clock, chunk_size=10)
    check_cards(store, ring, 45, range(30), 10)


@pytest.mark.parametrize("step", ["_prepare_chunk", "_write_chunk"])
def test_errors_reach_the_caller_and_stop_the_helper_thread(store, ring, clock, monkeypatch, step):
    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(generation, step, broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_series(store, ring, new_series(45, quantity=30), clock=clock, chunk_size=10)
    assert not any(t.name.startswith("radcore-generation") for t in threading.enumerate())
    with store.transaction() as txn:
        assert get_series(txn, store, 45).generated == 0


def test_closing_the_steps_stops_between_chunks(store, ring, clock):
    steps = generation.start_generation(store, ring, new_series(45, quantity=100), clock=clock, chunk_size=30)
    assert next(steps).generated == 30
    assert any(t.name.startswith("radcore-generation") for t in threading.enumerate())
    steps.close()
    assert not any(t.name.startswith("radcore-generation") for t in threading.enumerate())
    check_cards(store, ring, 45, range(30), 10)
    assert resume_generation(store, ring, 45, clock=clock).complete
    check_cards(store, ring, 45, range(100), 10)
