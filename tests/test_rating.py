import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_store import NOW, add_rate_table, new_series, open_store
from radcore.errors import Conflict, Invalid, NotFound
from radcore.rating import (Rate, billed_seconds, cost, delete_rate, delete_rate_table, find_rate,
                            get_rate_table, iter_rates, max_duration, normalize_number, put_rate,
                            put_rate_table, rate_prefixes)
from radcore.store import RateTable, SeriesStatus, get_version, put_series


# --- an independent reference: step by step, exact fractions -----------------------------------------

def ref_billed(rate, duration):
    if duration <= rate.grace:
        return 0
    billed = rate.min_volume
    while billed < duration:
        billed += rate.interval
    return billed


def ref_cost(rate, duration, tax_ppm=0):
    billed = ref_billed(rate, duration)
    if billed == 0 and duration <= rate.grace:
        return 0
    base = rate.connection_fee + math.ceil(Fraction(billed * rate.price_per_minute, 60))
    return base + math.ceil(Fraction(base * tax_ppm, 1_000_000))


def ref_max_duration(rate, available, tax_ppm, cap):
    if available < 0:
        return 0
    return max(d for d in range(cap + 1) if ref_cost(rate, d, tax_ppm) <= available)


rates = st.builds(Rate, prefix=st.just("44"), price_per_minute=st.integers(0, 5_000_000),
                  connection_fee=st.integers(0, 500_000), min_volume=st.integers(0, 120),
                  interval=st.integers(1, 90), grace=st.integers(0, 20))
taxes = st.sampled_from([0, 1, 50_000, 175_000, 200_000, 999_999, 1_000_000])


@given(rates, st.integers(0, 4000), taxes)
def test_cost_matches_reference(rate, duration, tax):
    assert billed_seconds(rate, duration) == ref_billed(rate, duration)
    assert cost(rate, duration, tax) == ref_cost(rate, duration, tax)


@given(rates, st.integers(0, 100_000), taxes)
def test_cost_is_monotone(rate, duration, tax):
    assert cost(rate, duration, tax) <= cost(rate, duration + 1, tax)


@settings(max_examples=300)
@given(rates, st.integers(-10, 3_000_000), taxes, st.integers(0, 1500))
def test_max_duration_matches_brute_force(rate, available, tax, cap):
    assert max_duration(rate, available, tax, cap) == ref_max_duration(rate, available, tax, cap)


@given(rates, st.integers(0, 10**12), taxes, st.integers(0, 200_000))
def test_max_duration_is_exact(rate, available, tax, cap):
    m = max_duration(rate, available, tax, cap)
    assert 0 <= m <= cap
    assert cost(rate, m, tax) <= available
    assert m == cap or cost(rate, m + 1, tax) > available


@pytest.mark.parametrize("rate,duration,expected", [
    # 60/60 at 0.10/min: every started minute is a full minute
    (Rate("1", 100_000, min_volume=60, interval=60), 1, 100_000),
    (Rate("1", 100_000, min_volume=60, interval=60), 60, 100_000),
    (Rate("1", 100_000, min_volume=60, interval=60), 61, 200_000),
    (Rate("1", 100_000, min_volume=60, interval=60), 3600, 6_000_000),
    # 1/1 at 0.06/min = 0.001/s
    (Rate("1", 60_000, min_volume=1, interval=1), 1, 1_000),
    (Rate("1", 60_000, min_volume=1, interval=1), 61, 61_000),
    # 30/6 at 0.12/min: first 30 s, then 6-second steps
    (Rate("1", 120_000, min_volume=30, interval=6), 10, 60_000),
    (Rate("1", 120_000, min_volume=30, interval=6), 30, 60_000),
    (Rate("1", 120_000, min_volume=30, interval=6), 31, 72_000),
    (Rate("1", 120_000, min_volume=30, interval=6), 37, 84_000),
    # per-second price that does not divide: 7 s at 0.033333/min = 3888.85 -> 3889 (rounded up)
    (Rate("1", 33_333, min_volume=1, interval=1), 7, 3_889),
    # grace: free up to 5 s, then the whole minimum applies
    (Rate("1", 100_000, min_volume=60, interval=60, grace=5), 5, 0),
    (Rate("1", 100_000, min_volume=60, interval=60, grace=5), 6, 100_000),
    (Rate("1", 100_000, min_volume=60, interval=60), 0, 0),
    # connection fee on top
    (Rate("1", 100_000, connection_fee=50_000, min_volume=60, interval=60), 61, 250_000),
    (Rate("1", 100_000, connection_fee=50_000, min_volume=60, interval=60, grace=3), 3, 0),
    # no minimum: 0/6 bills in 6 s steps from the first second
    (Rate("1", 60_000, min_volume=0, interval=6), 1, 6_000),
])
def test_known_costs(rate, duration, expected):
    assert cost(rate, duration) == expected


def test_tax_rounding():
    per_minute = Rate("1", 100_000, min_volume=60, interval=60)
    assert cost(per_minute, 60, 200_000) == 120_000  # exact 20%
    odd = Rate("1", 100_001, min_volume=60, interval=60)
    assert cost(odd, 60, 175_000) == 100_001 + 17_501  # 17_500.175 rounds up
    tiny = Rate("1", 1, min_volume=1, interval=1)
    assert cost(tiny, 1) == 1 and cost(tiny, 1, 200_000) == 2  # ceil(1/60) = 1, tax ceil(0.2) = 1


def test_known_max_durations():
    per_minute = Rate("1", 100_000, min_volume=60, interval=60)
    assert max_duration(per_minute, 250_000) == 120
    assert max_duration(per_minute, 99_999) == 0
    assert max_duration(per_minute, 100_000) == 60
    assert max_duration(per_minute, 10**12) == 86_400
    assert max_duration(per_minute, 10**12, cap=7200) == 7200
    assert max_duration(per_minute, -1) == 0
    thirty_six = Rate("1", 120_000, min_volume=30, interval=6)
    assert max_duration(thirty_six, 84_000) == 42 and max_duration(thirty_six, 83_999) == 36
    with_fee = Rate("1", 100_000, connection_fee=50_000, min_volume=60, interval=60, grace=4)
    assert max_duration(with_fee, 149_999) == 4  # only the free grace period fits: caller rejects
    assert max_duration(with_fee, 150_000) == 60
    assert max_duration(with_fee, 120_000 * 2 + 60_000, tax_ppm=200_000) == 120
    free = Rate("1", 0, connection_fee=10, min_volume=60, interval=60, grace=2)
    assert max_duration(free, 10) == 86_400 and max_duration(free, 9) == 2
    with pytest.raises(Invalid):
        max_duration(per_minute, 10, cap=-1)


@pytest.mark.parametrize("kwargs,field", [
    (dict(prefix="44a", price_per_minute=1), "prefix"),
    (dict(prefix="+44", price_per_minute=1), "prefix"),
    (dict(prefix="1" * 33, price_per_minute=1), "prefix"),
    (dict(prefix="44", price_per_minute=-1), "price_per_minute"),
    (dict(prefix="44", price_per_minute=1.5), "price_per_minute"),
    (dict(prefix="44", price_per_minute=True), "price_per_minute"),
    (dict(prefix="44", price_per_minute=1, interval=0), "interval"),
    (dict(prefix="44", price_per_minute=1, connection_fee=-1), "connection_fee"),
    (dict(prefix="44", price_per_minute=1, grace=-1), "grace"),
    (dict(prefix="44", price_per_minute=1, min_volume=2**32), "min_volume"),
    (dict(prefix="44", price_per_minute=1, effective_from=10, effective_to=10), "effective_to"),
])
def test_rate_validation(kwargs, field):
    with pytest.raises(Invalid) as e:
        Rate(**kwargs)
    assert e.value.field == field


@pytest.mark.parametrize("raw,kwargs,expected", [
    ("+44 20 7946-0000", {}, "442079460000"),
    ("0044 (20) 79460000", {}, "442079460000"),
    ("0011#442079460000", {"tech_prefix": "0011#"}, "442079460000"),
    ("0011#+442079460000", {"tech_prefix": "0011#"}, "442079460000"),
    ("442079460000", {"tech_prefix": "0011#"}, "442079460000"),
    ("+442079460000", {"strip_plus": False}, ""),
    ("00442079460000", {"strip_00": False}, "00442079460000"),
    ("*123#", {}, ""),
    ("44207x", {}, ""),
    ("4420\u0667", {}, ""),
    ("", {}, ""),
    ("+", {}, ""),
    ("  12345  ", {}, "12345"),
])
def test_normalize_number(raw, kwargs, expected):
    assert normalize_number(raw, **kwargs) == expected


# --- storage and lookup -----------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "db")
    add_rate_table(s, "std")
    add_rate_table(s, "stdx")
    yield s
    s.close()


def put_all(store, table, *rates):
    with store.transaction(write=True) as txn:
        for rate in rates:
            put_rate(txn, store, table, rate)


def lookup(store, digits, now=NOW, table="std"):
    with store.transaction() as txn:
        rate = find_rate(txn, store, table, digits, now)
    return None if rate is None else (rate.prefix, rate.price_per_minute)


def test_longest_prefix_match(store):
    put_all(store, "std", Rate("4", 1), Rate("44", 2), Rate("447", 3), Rate("4479", 4), Rate("1", 5))
    put_all(store, "stdx", Rate("44", 99), Rate("4", 98))
    assert lookup(store, "447911123456") == ("4479", 4)
    assert lookup(store, "447811123456") == ("447", 3)
    assert lookup(store, "441234") == ("44", 2)
    assert lookup(store, "49") == ("4", 1)
    assert lookup(store, "4") == ("4", 1)
    assert lookup(store, "33123") is None
    assert lookup(store, "") is None
    assert lookup(store, "44", table="stdx") == ("44", 99)
    assert lookup(store, "1", table="stdx") is None
    assert lookup(store, "44", table="nonexistent") is None


def test_catch_all_prefix(store):
    put_all(store, "std", Rate("", 7), Rate("44", 2))
    assert lookup(store, "33123") == ("", 7)
    assert lookup(store, "4412") == ("44", 2)


def test_effective_periods(store):
    put_all(store, "std",
            Rate("44", 100, effective_from=0),                            # open-ended base rate
            Rate("44", 50, effective_from=NOW, effective_to=NOW + 100),   # promotion
            Rate("33", 10, effective_from=0, effective_to=NOW),           # ended
            Rate("33", 20, effective_from=NOW + 1000),                    # successor, not yet
            Rate("3", 1))
    assert lookup(store, "4412", NOW - 1) == ("44", 100)
    assert lookup(store, "4412", NOW) == ("44", 50)
    assert lookup(store, "4412", NOW + 99) == ("44", 50)
    assert lookup(store, "4412", NOW + 100) == ("44", 100)
    assert lookup(store, "3312", NOW - 1) == ("33", 10)
    assert lookup(store, "3312", NOW) == ("3", 1)       # gap between periods: shorter prefix rates it
    assert lookup(store, "3312", NOW + 1000) == ("33", 20)


def test_put_delete_iter(store):
    with store.transaction(write=True) as txn:
        version = get_version(txn, store)
        put_rate(txn, store, "std", Rate("44", 2, effective_from=5))
        put_rate(txn, store, "std", Rate("44", 3, effective_from=5))  # replaces
        put_rate(txn, store, "std", Rate("4", 1, connection_fee=7, min_volume=30, interval=6, grace=2,
                                         effective_from=1, effective_to=9))
        assert get_version(txn, store) == version + 3
        with pytest.raises(NotFound):
            put_rate(txn, store, "missing", Rate("44", 1))
    with store.transaction() as txn:
        assert list(iter_rates(txn, store, "std")) == [
            Rate("4", 1, connection_fee=7, min_volume=30, interval=6, grace=2, effective_from=1,
                 effective_to=9),
            Rate("44", 3, effective_from=5)]
        assert list(iter_rates(txn, store, "stdx")) == []
    with store.transaction(write=True) as txn:
        assert delete_rate(txn, store, "std", "44", 5)
        assert not delete_rate(txn, store, "std", "44", 5)
        assert [r.prefix for r in iter_rates(txn, store, "std")] == ["4"]


def test_rate_tables(store):
    put_all(store, "std", Rate("44", 1), Rate("45", 1))
    put_all(store, "stdx", Rate("44", 9))
    with store.transaction(write=True) as txn:
        assert get_rate_table(txn, store, "std") == RateTable("std", "USD", "test", NOW)
        assert get_rate_table(txn, store, "nope") is None
        with pytest.raises(Invalid) as e:
            put_rate_table(txn, store, RateTable("bad", "usd"))
        assert e.value.field == "currency"
        put_series(txn, store, new_series(7, rate_table="std"))
        with pytest.raises(Conflict, match="series 7"):
            delete_rate_table(txn, store, "std")
        put_series(txn, store, new_series(7, rate_table="std", status=SeriesStatus.DELETED))
        assert delete_rate_table(txn, store, "std") == 2
        assert get_rate_table(txn, store, "std") is None
        assert list(iter_rates(txn, store, "std")) == []
        assert [r.price_per_minute for r in iter_rates(txn, store, "stdx")] == [9]
        with pytest.raises(NotFound):
            delete_rate_table(txn, store, "std")


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    s = open_store(tmp_path_factory.mktemp("rates") / "db")
    add_rate_table(s, "t")
    yield s
    s.close()


entries = st.lists(st.tuples(st.text("0123", max_size=4), st.integers(0, 30), st.integers(0, 30)),
                   max_size=25)


@given(entries, st.text("0123", max_size=6), st.integers(0, 40))
def test_find_rate_matches_brute_force(shared_store, spec, digits, now):
    store = shared_store
    table = {}
    for i, (prefix, start, length) in enumerate(spec):
        end = start + length if length else 0
        table[(prefix, start)] = Rate(prefix, i, effective_from=start, effective_to=end)
    effective = [r for r in table.values() if digits.startswith(r.prefix) and r.effective_at(now)]
    expected = max(effective, key=lambda r: (len(r.prefix), r.effective_from), default=None)
    txn = store.begin(write=True)
    try:
        for rate in table.values():
            put_rate(txn, store, "t", rate)
        assert find_rate(txn, store, "t", digits, now) == expected
        # The workers' shortcut: probe only the prefix lengths the table has.
        prefixes = rate_prefixes(txn, store, "t")
        assert prefixes == {prefix for prefix, _ in table}
        assert find_rate(txn, store, "t", digits, now, prefixes) == expected
        assert rate_prefixes(txn, store, "t", limit=len(prefixes) - 1) is None if prefixes else True
    finally:
        txn.abort()
