"""The duplicate cache: the reference (`radcore.dupcache`) and the C one the lane uses
(`radcore._dupcache`) behave the same, operation by operation, under one injected clock.

The C cache is checked against the reference over generated operation sequences (hypothesis), with
small bounds and many colliding keys so eviction, replacement, expiry and the open-addressing
table's deletions are all exercised; the window, replacement and bound rules are also spelled out
once for each implementation.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radcore import fastpath
from radcore.clock import FixedClock
from radcore.dupcache import ACCT, AUTH, DuplicateCache

C_CACHE = fastpath.load_lane_cache() if fastpath.load_lane() is not None else None
needs_c = pytest.mark.skipif(C_CACHE is None, reason="the C duplicate cache is built with the lane (Linux)")
IMPLEMENTATIONS = [pytest.param(DuplicateCache, id="reference"),
                   pytest.param(C_CACHE, id="c", marks=needs_c)]


@pytest.mark.parametrize("cache_type", IMPLEMENTATIONS)
def test_window_replacement_and_bound(cache_type):
    clock = FixedClock(1000)
    cache = cache_type(30, max_entries=3, clock=clock)
    key = ("10.0.0.1", 4000, 7, AUTH)
    cache.store(key, b"A" * 16, b"reply-a")
    assert cache.lookup(key, b"A" * 16) == b"reply-a"
    assert cache.lookup(key, b"B" * 16) is None, "a new authenticator is a new request"
    assert cache.lookup(("10.0.0.1", 4000, 7, ACCT), b"A" * 16) is None, "acct Identifiers are apart"
    cache.store(key, b"B" * 16, b"reply-b")
    assert cache.lookup(key, b"A" * 16) is None and cache.lookup(key, b"B" * 16) == b"reply-b"
    clock.advance(30)
    assert cache.lookup(key, b"B" * 16) is None and len(cache) == 0, "expired at the window's end"
    for port in range(5):
        cache.store(("10.0.0.1", port, 1, AUTH), b"A" * 16, b"r%d" % port)
    assert len(cache) == 3 and cache.lookup(("10.0.0.1", 0, 1, AUTH), b"A" * 16) is None
    assert cache.lookup(("10.0.0.1", 4, 1, AUTH), b"A" * 16) == b"r4"
    cache.discard(("10.0.0.1", 4, 1, AUTH))
    assert cache.lookup(("10.0.0.1", 4, 1, AUTH), b"A" * 16) is None
    clock.advance(31)
    assert cache.expire() == 2 and len(cache) == 0
    off = cache_type(0, clock=clock)
    off.store(key, b"A" * 16, b"r")
    assert off.lookup(key, b"A" * 16) is None and len(off) == 0


@needs_c
def test_c_keys_are_addresses_not_spellings():
    """The lane keys entries by the sockaddr's octets, so the Python path's text must map to the
    same key however the address is written; a non-address is an error, not a silent miss."""
    cache = C_CACHE(30, clock=FixedClock(0))
    cache.store(("2001:db8::1", 1812, 9, AUTH), b"A" * 16, b"v6")
    assert cache.lookup(("2001:0db8:0:0::0001", 1812, 9, AUTH), b"A" * 16) == b"v6"
    assert cache.lookup(("fe80::1%eth0", 1812, 9, AUTH), b"A" * 16) is None
    cache.store(("fe80::1%eth0", 1812, 9, AUTH), b"A" * 16, b"scoped")
    assert cache.lookup(("fe80::1", 1812, 9, AUTH), b"A" * 16) == b"scoped"
    assert cache.lookup(("::ffff:10.0.0.1", 1812, 9, AUTH), b"A" * 16) is None, "mapped v4 is v6"
    with pytest.raises(ValueError, match="not an IP address"):
        cache.store(("nas-1", 1812, 9, AUTH), b"A" * 16, b"r")
    with pytest.raises(ValueError, match="16 octets"):
        cache.lookup(("10.0.0.1", 1812, 9, AUTH), b"short")


KEYS = st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"]), st.integers(1000, 1003),
                 st.integers(0, 3), st.sampled_from([AUTH, ACCT]))
AUTHS = st.sampled_from([b"A" * 16, b"B" * 16])
OPS = st.lists(st.one_of(
    st.tuples(st.just("store"), KEYS, AUTHS, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("lookup"), KEYS, AUTHS),
    st.tuples(st.just("discard"), KEYS),
    st.tuples(st.just("expire")),
    st.tuples(st.just("advance"), st.integers(0, 12)),
), max_size=120)


@needs_c
@settings(max_examples=300, deadline=None)
@given(ops=OPS, max_entries=st.integers(0, 9), seconds=st.sampled_from([0, 5, 30]))
def test_c_cache_matches_the_reference(ops, max_entries, seconds):
    clock = FixedClock(100)
    ref = DuplicateCache(seconds, max_entries=max_entries, clock=clock)
    c = C_CACHE(seconds, max_entries=max_entries, clock=clock)
    for op in ops:
        if op[0] == "advance":
            clock.advance(op[1])
            continue
        got = getattr(c, op[0])(*op[1:])
        want = getattr(ref, op[0])(*op[1:])
        assert got == want, op
        assert len(c) == len(ref), op
    # Every key the reference still holds, the C cache answers the same way (expired or not).
    for key, (auth, _, _) in list(ref._entries.items()):
        assert c.lookup(key, auth) == ref.lookup(key, auth)
