import os
import struct

import lmdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers_store import NOW, open_store
from radcore.errors import Invalid, StoreError
from radcore.store import (CARD_FIXED_SIZE, CARD_FORMAT, CARD_OFFSETS, DB_NAMES, SCHEMA_VERSION,
                           SESSION_FIXED_SIZE, Card, CardStatus, Cdr, RateTable, Reseller, RoutingPlan,
                           Series, SeriesStatus, Session, SessionState, TaxProfile, bump_version, card_key,
                           cdr_key, format_card_number, get_card, get_series, get_version, iter_card_cdrs,
                           iter_series_cards, name_key, next_cdr_key, parse_card_number, put_card,
                           put_series, series_key, session_key, split_card_key)
from radcore.store import (MAX_SESSION_KEY_SIZE, TOMBSTONE, append_cdr, delete_session, get_session,
                           iter_expired_sessions, iter_session_range, iter_sessions, put_session)

I64 = st.integers(-(2**63), 2**63 - 1)
U32 = st.integers(0, 2**32 - 1)
TEXT = st.text(max_size=40)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "db")
    yield s
    s.close()


# --- environment ------------------------------------------------------------------------------------

def test_open_creates_databases_and_schema(tmp_path):
    path = tmp_path / "var" / "db"
    with open_store(path) as store:
        assert store.env.flags()["sync"] is False
        with store.transaction() as txn:
            assert set(store.env.dbs(txn)) == {n.encode() for n in DB_NAMES}
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o700)
    assert oct(os.stat(path / "data.mdb").st_mode & 0o777) == oct(0o600)
    raw = lmdb.open(str(path), max_dbs=32, readonly=True)
    try:
        meta = raw.open_db(b"meta", create=False)
        with raw.begin() as txn:
            assert struct.unpack("<I", txn.get(b"schema_version", db=meta))[0] == SCHEMA_VERSION
    finally:
        raw.close()
    with open_store(path) as again:  # reopening checks and accepts the version
        assert again.readonly is False


def test_durable_by_default(tmp_path):
    with open_store(tmp_path / "db", sync=True) as store:
        flags = store.env.flags()
        assert flags["sync"] and flags["metasync"] and not flags["writemap"]


def test_schema_version_mismatch(tmp_path):
    path = tmp_path / "db"
    open_store(path).close()
    raw = lmdb.open(str(path), max_dbs=32)
    meta = raw.open_db(b"meta")
    with raw.begin(write=True) as txn:
        txn.put(b"schema_version", struct.pack("<I", 7), db=meta)
    raw.close()
    with pytest.raises(StoreError, match=r"schema version 7.*schema version 1"):
        open_store(path)


def test_readonly(tmp_path):
    with pytest.raises(StoreError, match="not an initialised"):
        open_store(tmp_path / "empty-but-created", readonly=True)
    path = tmp_path / "db"
    with open_store(path) as store, store.transaction(write=True) as txn:
        put_card(txn, store, card_key(1, 1), Card(balance=7))
    with open_store(path, readonly=True) as ro:
        with ro.transaction() as txn:
            assert get_card(txn, ro, card_key(1, 1)).balance == 7
        with pytest.raises(StoreError, match="read-only"):
            ro.begin(write=True)


def test_map_full_is_store_error_with_advice(tmp_path):
    with open_store(tmp_path / "db", map_size=1 << 20) as store:
        with pytest.raises(StoreError, match="map is full.*raise map_size"):
            with store.transaction(write=True) as txn:
                for serial in range(100_000):
                    put_card(txn, store, card_key(1, serial), Card(pin_blob=b"x" * 40))
        with pytest.raises(StoreError, match="map is full.*raise map_size"):
            with store.transaction(write=True) as txn:
                for serial in range(100_000):
                    txn.put(card_key(1, serial), b"y" * 100, db=store.cards)  # raw lmdb call in the body


def test_transaction_aborts_on_exception(store):
    with pytest.raises(RuntimeError):
        with store.transaction(write=True) as txn:
            put_card(txn, store, card_key(1, 1), Card())
            raise RuntimeError("boom")
    with store.transaction() as txn:
        assert get_card(txn, store, card_key(1, 1)) is None


def test_begin_refused_after_fork_and_close(tmp_path):
    store = open_store(tmp_path / "db")
    pid = os.fork()
    if pid == 0:  # child: the inherited environment must not be used
        try:
            store.begin()
        except StoreError as e:
            os._exit(0 if "after fork" in str(e) else 2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    with store.begin() as txn:  # still fine in the opener
        assert txn.get(b"x", db=store.cards) is None
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.begin()


# --- keys and card numbers --------------------------------------------------------------------------

def test_card_key_layout_and_order():
    assert card_key(45, 1122333) == bytes.fromhex("0000002d") + bytes.fromhex("0011201d")
    assert split_card_key(card_key(45, 1122333)) == (45, 1122333)
    assert series_key(45) == card_key(45, 7)[:4]
    keys = [card_key(s, n) for s in (1, 2, 256) for n in (0, 1, 255, 65_536, 99_999_999)]
    assert sorted(keys) == keys
    with pytest.raises(Invalid):
        split_card_key(b"1234")


@pytest.mark.parametrize("text,expected", [
    ("45-001122333", (45, 1122333)), ("45001122333", (45, 1122333)), (" 45 - 001 122 333 ", (45, 1122333)),
    ("1-000000000", (1, 0)), ("99999-099999999", (99999, 99_999_999)), ("045-000000001", (45, 1)),
])
def test_parse_card_number(text, expected):
    assert parse_card_number(text) == expected


@pytest.mark.parametrize("text", [
    "", "45", "45-1122333", "45-0011223334", "0-000000001", "100000-000000001", "45-100000000",
    "45--001122333", "4a-001122333", "45-00112233x", "\u0664\u0665-001122333", "123456001122333",
])
def test_parse_card_number_rejects(text):
    with pytest.raises(Invalid) as e:
        parse_card_number(text)
    assert e.value.field == "card_number"


@given(st.integers(1, 99_999), st.integers(0, 99_999_999))
def test_card_number_round_trip(series, serial):
    text = format_card_number(series, serial)
    assert text.split("-")[1] == f"{serial:09d}"
    assert parse_card_number(text) == (series, serial)
    assert parse_card_number(text.replace("-", "")) == (series, serial)


def test_format_card_number_range():
    assert format_card_number(45, 1122333) == "45-001122333"
    for bad in ((0, 1), (100_000, 1), (1, -1), (1, 100_000_000)):
        with pytest.raises(Invalid):
            format_card_number(*bad)


def test_name_and_session_keys():
    assert name_key("std") == b"std"
    for bad in ("", "a\x00b", "x" * 256, 5):
        with pytest.raises(Invalid):
            name_key(bad)
    assert session_key("gw1", "ABC 123") == b"gw1\x00ABC 123"
    with pytest.raises(Invalid):
        session_key("g\x00w", "x")
    with pytest.raises(Invalid):
        session_key("gw", "x" * 600)


def test_labels():
    assert CardStatus.ACTIVATED.label == "activated"
    assert [s.value for s in CardStatus] == [0, 1, 2, 3, 4]
    assert SeriesStatus.DELETED.label == "deleted" and SeriesStatus.ACTIVE == 0
    assert [s.value for s in SessionState] == [0, 1, 2]


# --- records ----------------------------------------------------------------------------------------

cards = st.builds(Card, status=st.sampled_from(CardStatus), balance=I64, reserved=I64,
                  open_calls=st.integers(0, 0xFFFF), activated_at=I64, expires_at=I64, fees_paid_until=I64,
                  last_use=I64, failed_pins=st.integers(0, 255), locked_until=I64,
                  pin_digest=st.binary(min_size=32, max_size=32), pin_blob=st.binary(max_size=64))


@given(cards)
def test_card_round_trip(card):
    buf = card.pack()
    assert len(buf) == CARD_FIXED_SIZE + len(card.pin_blob)
    assert Card.unpack(buf) == card
    assert Card.unpack(memoryview(buf)) == card


def test_card_layout_offsets_documented_for_cython():
    card = Card(status=CardStatus.BLOCKED, balance=-5, reserved=6, open_calls=513, activated_at=7,
                expires_at=8, fees_paid_until=9, last_use=10, failed_pins=3, locked_until=11,
                pin_digest=bytes(range(32)), pin_blob=b"\x01blob")
    buf = card.pack()
    assert CARD_FORMAT == "<7qBBH4x32s" and CARD_FIXED_SIZE == 96
    at = CARD_OFFSETS
    for name in ("balance", "reserved", "activated_at", "expires_at", "fees_paid_until", "last_use",
                 "locked_until"):
        assert struct.unpack_from("<q", buf, at[name])[0] == getattr(card, name), name
    assert buf[at["status"]] == 4 and buf[at["failed_pins"]] == 3
    assert struct.unpack_from("<H", buf, at["open_calls"])[0] == 513
    assert buf[60:64] == bytes(4) and buf[at["pin_digest"]:at["pin_digest"] + 32] == bytes(range(32))
    assert buf[at["pin_blob"]:] == b"\x01blob"


def test_card_pack_and_unpack_errors():
    with pytest.raises(Invalid, match="pin_digest"):
        Card(pin_digest=b"short").pack()
    with pytest.raises(Invalid):
        Card(failed_pins=256).pack()
    with pytest.raises(Invalid):
        Card(balance=2**63).pack()
    with pytest.raises(StoreError, match="corrupt card"):
        Card.unpack(b"\x00" * 95)
    bad = bytearray(Card().pack())
    bad[56] = 9
    with pytest.raises(StoreError, match="unknown status"):
        Card.unpack(bytes(bad))
    assert Card(balance=10, reserved=4).available == 6


sessions = st.builds(Session, card_key=st.binary(min_size=8, max_size=8), state=st.sampled_from(SessionState),
                     reserved=I64, charged=I64, opened_at=I64, deadline=I64, last_session_time=U32,
                     price_per_minute=I64, connection_fee=I64, min_volume=U32, interval=U32, grace=U32,
                     tax_ppm=U32, prefix=TEXT, called=TEXT, acct_session_id=TEXT, conf_id=TEXT, nas=TEXT)


@given(sessions)
def test_session_round_trip(session):
    buf = session.pack()
    assert buf[:8] == session.card_key and buf[76] == session.state
    assert Session.unpack(buf) == session


def test_session_errors():
    assert SESSION_FIXED_SIZE == 80
    with pytest.raises(Invalid, match="card_key"):
        Session(card_key=b"123")
    with pytest.raises(Invalid):
        Session(card_key=bytes(8), tax_ppm=-1).pack()
    buf = Session(card_key=bytes(8), nas="gw1").pack()
    with pytest.raises(StoreError, match="corrupt session"):
        Session.unpack(buf[:-1])
    with pytest.raises(StoreError, match="corrupt session"):
        Session.unpack(buf[:40])


@given(st.builds(Cdr, nas=TEXT, acct_session_id=TEXT, conf_id=TEXT, called=TEXT, prefix=TEXT, start_time=I64,
                 stop_time=I64, duration=U32, billed_seconds=U32, cost=I64, terminate_cause=U32))
def test_cdr_round_trip(cdr):
    assert Cdr.unpack(cdr.pack()) == cdr


def test_series_json_round_trip_and_forward_compat():
    series = Series(number=45, name="Promo \u00e9", status=SeriesStatus.STOPPED, quantity=10, face_balance=5,
                    initial_status=CardStatus.ACTIVATED, control_panel=True, generated=3)
    back = Series.from_bytes(series.to_bytes())
    assert back == series and back.status is SeriesStatus.STOPPED
    assert back.initial_status is CardStatus.ACTIVATED
    newer = series.to_bytes()[:-1] + b',"field_from_the_future":1}'
    assert Series.from_bytes(newer) == series
    with pytest.raises(StoreError, match="corrupt Series"):
        Series.from_bytes(b"{not json")
    with pytest.raises(StoreError, match="corrupt Series"):
        Series.from_bytes(b'{"name": "no number"}')
    assert not series.complete and Series(1, quantity=3, generated=3).complete
    assert not Series(1, quantity=0, generated=0).complete


@pytest.mark.parametrize("record", [
    RateTable("std", "EUR", "standard", NOW), TaxProfile("vat", 200_000, "20%"),
    RoutingPlan("a", "0011#", "carrier A"), Reseller("r1", "Reseller One", NOW),
])
def test_config_records_round_trip(record):
    assert type(record).from_bytes(record.to_bytes()) == record


# --- helpers over a real store ----------------------------------------------------------------------

def test_series_and_card_access(store):
    with store.transaction(write=True) as txn:
        assert get_series(txn, store, 45) is None
        put_series(txn, store, Series(45, quantity=3))
        for series in (44, 45, 46):
            for serial in (2, 0, 1):
                put_card(txn, store, card_key(series, serial), Card(balance=series * 10 + serial))
    with store.transaction() as txn:
        assert get_series(txn, store, 45).quantity == 3
        listed = [(n, c.balance) for n, c in iter_series_cards(txn, store, 45)]
        assert listed == [(0, 450), (1, 451), (2, 452)]
        assert list(iter_series_cards(txn, store, 47)) == []
        assert list(iter_series_cards(txn, store, 1)) == []
        assert get_card(txn, store, card_key(46, 2)).balance == 462


def test_config_version_counter(store):
    with store.transaction(write=True) as txn:
        assert get_version(txn, store) == 0
        assert bump_version(txn, store) == 1
        assert bump_version(txn, store) == 2
        assert bump_version(txn, store, "fees") == 1
        put_series(txn, store, Series(1))
        assert get_version(txn, store) == 3
        put_series(txn, store, Series(1), bump=False)
        assert get_version(txn, store) == 3
    with store.transaction() as txn:
        assert get_version(txn, store, "config_version") == 3 and get_version(txn, store, "fees") == 1


def test_cdr_keys_sequence(store):
    key = card_key(45, 9)
    assert cdr_key(key, NOW, 1) == key + struct.pack(">QI", NOW, 1)
    with store.transaction(write=True) as txn:
        first = next_cdr_key(txn, store, key, NOW)
        assert first == cdr_key(key, NOW, 0)
        txn.put(first, Cdr(cost=1).pack(), db=store.cdrs)
        second = next_cdr_key(txn, store, key, NOW)
        assert second == cdr_key(key, NOW, 1)
        txn.put(second, Cdr(cost=2).pack(), db=store.cdrs)
        txn.put(cdr_key(key, NOW + 5, 0), Cdr(cost=3).pack(), db=store.cdrs)
        txn.put(cdr_key(card_key(45, 10), NOW, 0), Cdr(cost=4).pack(), db=store.cdrs)
        assert next_cdr_key(txn, store, key, NOW) == cdr_key(key, NOW, 2)
        assert next_cdr_key(txn, store, key, NOW - 1) == cdr_key(key, NOW - 1, 0)
        assert next_cdr_key(txn, store, card_key(99, 0), NOW) == cdr_key(card_key(99, 0), NOW, 0)
    with store.transaction() as txn:
        assert [c.cost for _, c in iter_card_cdrs(txn, store, key)] == [1, 2, 3]


def test_append_cdr(store):
    key = card_key(45, 9)
    with store.transaction(write=True) as txn:
        first = append_cdr(txn, store, key, Cdr(stop_time=NOW, cost=1))
        second = append_cdr(txn, store, key, Cdr(stop_time=NOW, cost=2))
    assert (first, second) == (cdr_key(key, NOW, 0), cdr_key(key, NOW, 1))


def session(deadline, **kwargs):
    return Session(card_key=card_key(45, 1), deadline=deadline, **kwargs)


def test_sessions_and_deadline_index(store):
    a, b, c = session_key("gw1", "a"), session_key("gw1", "b"), session_key("gw10", "c")
    with store.transaction(write=True) as txn:
        put_session(txn, store, a, session(NOW + 10))
        put_session(txn, store, b, session(NOW + 5))
        put_session(txn, store, c, session(NOW + 1, nas="gw10"))
        put_session(txn, store, a, session(NOW + 2, charged=7))  # deadline moved: old entry removed
        assert get_session(txn, store, a).charged == 7
        assert txn.stat(store.session_deadlines)["entries"] == 3
        assert [k for k, _ in iter_sessions(txn, store, "gw1")] == [a, b]
        assert [k for k, _ in iter_sessions(txn, store, "gw10")] == [c]
        assert list(iter_sessions(txn, store, "gw")) == []
        assert [k for k, _ in iter_expired_sessions(txn, store, NOW)] == []
        assert [k for k, _ in iter_expired_sessions(txn, store, NOW + 5)] == [c, a, b]
        assert [k for k, _ in iter_expired_sessions(txn, store, NOW + 5, limit=2)] == [c, a]
        assert delete_session(txn, store, c)
        assert not delete_session(txn, store, c)
        assert delete_session(txn, store, a, get_session(txn, store, a))
        assert get_session(txn, store, a) is None
        assert txn.stat(store.session_deadlines)["entries"] == 1
        txn.delete(b, db=store.sessions)  # written behind put_session's back: index entry goes stale
        assert iter_expired_sessions(txn, store, NOW + 100) == []
        assert txn.stat(store.session_deadlines)["entries"] == 0


def test_stopped_calls_live_in_the_tombstone_range_apart_from_open_calls(store):
    """A tombstone is kept under TOMBSTONE + key, after every open call, so the open calls of a batch
    share a few pages; every reader still finds it by the plain key."""
    open_, stopped = session_key("gw1", "open"), session_key("gw1", "stopped")
    with store.transaction(write=True) as txn:
        put_session(txn, store, open_, session(NOW + 10, state=SessionState.STARTED))
        put_session(txn, store, stopped, session(NOW + 10, state=SessionState.STARTED))
        put_session(txn, store, stopped, session(NOW + 99, state=SessionState.STOPPED, charged=5))
        assert [bytes(k) for k, _ in txn.cursor(db=store.sessions)] == [open_, TOMBSTONE + stopped]
        assert [bytes(k[8:]) for k, _ in txn.cursor(db=store.session_deadlines)] == [open_, TOMBSTONE + stopped]
        assert get_session(txn, store, stopped).charged == 5
        assert [k for k, _ in iter_sessions(txn, store, "gw1")] == [open_]
        assert [k for k, _ in iter_session_range(txn, store)] == [open_]
        assert [k for k, _ in iter_session_range(txn, store, tombstones=True)] == [open_, stopped]
        assert [k for k, _ in iter_session_range(txn, store, open_ + b"\0", tombstones=True)] == [stopped]
        # Amending a stopped call keeps it where it is, with one deadline entry.
        put_session(txn, store, stopped, session(NOW + 99, state=SessionState.STOPPED, charged=6))
        assert txn.stat(store.session_deadlines)["entries"] == 2
        assert [(k, s.charged) for k, s in iter_expired_sessions(txn, store, NOW + 99)] == [(open_, 0), (stopped, 6)]
        assert delete_session(txn, store, stopped)
        assert get_session(txn, store, stopped) is None
        assert txn.stat(store.session_deadlines)["entries"] == 1 and txn.stat(store.sessions)["entries"] == 1


def test_a_tombstone_under_the_plain_key_is_still_found_moved_and_swept(store):
    """Stores written before the tombstone range kept stopped calls under the plain key."""
    skey = session_key("gw1", "old")
    legacy = session(NOW + 50, state=SessionState.STOPPED, charged=3)
    with store.transaction(write=True) as txn:
        txn.put(skey, legacy.pack(), db=store.sessions)
        txn.put(struct.pack(">Q", NOW + 50) + skey, b"", db=store.session_deadlines)
        assert get_session(txn, store, skey) == legacy
        assert [k for k, _ in iter_expired_sessions(txn, store, NOW + 50)] == [skey]
        put_session(txn, store, skey, session(NOW + 60, state=SessionState.STOPPED, charged=4))
        assert [bytes(k) for k, _ in txn.cursor(db=store.sessions)] == [TOMBSTONE + skey]
        assert [bytes(k) for k, _ in txn.cursor(db=store.session_deadlines)] == [
            struct.pack(">Q", NOW + 60) + TOMBSTONE + skey]
        txn.put(skey, legacy.pack(), db=store.sessions)  # and one that is never written again
        assert delete_session(txn, store, skey) and get_session(txn, store, skey) is None
        assert txn.stat(store.sessions)["entries"] == 0


def test_the_longest_session_key_fits_with_its_tombstone_mark_and_deadline(store):
    longest = session_key("gw", "x" * (MAX_SESSION_KEY_SIZE - 3))
    assert len(longest) == MAX_SESSION_KEY_SIZE
    with pytest.raises(Invalid, match="session"):
        session_key("gw", "x" * (MAX_SESSION_KEY_SIZE - 2))
    with store.transaction(write=True) as txn:
        put_session(txn, store, longest, session(NOW + 1))
        put_session(txn, store, longest, session(NOW + 2, state=SessionState.STOPPED))
        assert get_session(txn, store, longest).state == SessionState.STOPPED
        assert [k for k, _ in iter_expired_sessions(txn, store, NOW + 2)] == [longest]
