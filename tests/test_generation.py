import itertools
import json

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
