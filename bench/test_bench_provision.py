"""What `bench.provision` builds: the cards every server gets, and the day of stopped calls
(`--tombstones`) that makes radcore's store look like one in service."""

from __future__ import annotations

import time
from pathlib import Path

from bench.provision import RETENTION, SERIES, provision
from radcore.store import SessionState, Store, get_card, iter_session_range, split_card_key


def test_tombstones_are_a_day_of_stopped_calls_on_the_provisioned_cards(tmp_path):
    before = int(time.time())
    manifest = provision(tmp_path, 20, freeradius=False, tombstones=300)
    assert manifest["tombstones"] == 300
    store = Store(manifest["store"], map_size=manifest["map_size"], readonly=True)
    try:
        with store.begin() as txn:
            calls = list(iter_session_range(txn, store, tombstones=True))
            assert len(calls) == 300 and len({key for key, _ in calls}) == 300
            for _, session in calls:
                series, serial = split_card_key(session.card_key)
                assert series == SERIES and get_card(txn, store, session.card_key) is not None
                assert session.state == SessionState.STOPPED and session.reserved == 0
                assert before < session.deadline <= int(time.time()) + RETENTION
            assert list(iter_session_range(txn, store)) == [], "no call is open"
    finally:
        store.close()
    data = Path(manifest["store"]) / "data.mdb"
    made = data.stat().st_mtime_ns
    assert provision(tmp_path, 20, freeradius=False, tombstones=300) == manifest
    assert data.stat().st_mtime_ns == made, "the same parameters reuse the store"
    assert provision(tmp_path, 20, freeradius=False)["tombstones"] == 0, "a different store is rebuilt"
