"""End-to-end throughput of a real radcore server: UDP, the prepaid handler, durable LMDB commits.

One radcore (`python -m radcore.supervisor` with `radcore.handler:make_handler`, 1 worker, store on
disk with sync on) serves 100,000 provisioned cards; `bench.loadgen` drives it for a few seconds per
mode. Each benchmark is one run (`benchmark.pedantic`, one round: a run is already thousands of
requests), and what matters is in `extra_info`: answered requests/s, completed flows/s and latency
percentiles of card authentication, number authorization, accounting Start/Stop and whole calls.

    .venv/bin/python -m pytest bench/test_bench_e2e.py                      # the real thing (~1 min)
    .venv/bin/python -m pytest bench --benchmark-disable                    # smoke test, tiny numbers

Speed is never asserted (shared, noisy machines); correctness is: every request is answered, every
reply verifies (Response Authenticator, Message-Authenticator), nothing is rejected. Side-by-side
ratios against FreeRADIUS and pyrad come from `python -m bench.compare`, not from here.
Environment: RADCORE_BENCH_CARDS and RADCORE_BENCH_SECONDS override the card count and run length.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import os
import socket
import threading

import pytest

try:
    import bench._loadgen  # noqa: F401
except ImportError as exc:
    if os.environ.get("RADCORE_REQUIRE_EXTENSIONS"):
        raise
    pytest.skip(f"bench._loadgen is not built ({exc}): pip install -e . or cythonize -i -3 bench/_loadgen.pyx",
                allow_module_level=True)

from bench import _loadgen, loadgen
from radcore import dictionary as d
from radcore import packet
from bench.servers import SECRET, RadcoreServer
from bench.provision import provision


def _smoke(config) -> bool:
    return bool(config.getoption("benchmark_disable", False)) and not config.getoption("benchmark_enable", False)


@pytest.fixture(scope="module")
def sizes(request) -> dict:
    if _smoke(request.config):
        return {"cards": 300, "seconds": 0.3, "warmup": 0.1, "window": 4}
    return {"cards": int(os.environ.get("RADCORE_BENCH_CARDS", "100000")),
            "seconds": float(os.environ.get("RADCORE_BENCH_SECONDS", "3")), "warmup": 0.5, "window": 16}


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, sizes) -> dict:
    return provision(tmp_path_factory.mktemp("provision"), sizes["cards"])


@pytest.fixture(scope="module")
def server(tmp_path_factory, provisioned):
    srv = RadcoreServer(tmp_path_factory.mktemp("radcore"), provisioned, workers=1)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def cards(provisioned):
    return loadgen.load_cards(provisioned["cards_file"])


def test_loadgen_md5_matches_hashlib():
    """The load generator verifies replies with its own MD5/HMAC-MD5; it must agree with OpenSSL's."""
    for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 200, 4096):
        data = os.urandom(n)
        assert _loadgen.md5(data) == hashlib.md5(data).digest()
        key = os.urandom(n % 90 + 1)
        assert _loadgen.hmac_md5(key, data) == hmac.new(key, data, hashlib.md5).digest()


@pytest.mark.parametrize("mode", ["card-auth", "number-auth", "acct", "call"])
@pytest.mark.benchmark(group="e2e-radcore")
def test_radcore_end_to_end(benchmark, server, cards, sizes, mode):
    """One closed-loop run of `mode`, 4 sockets x `window` requests in flight, against 1 durable worker."""
    def run():
        return loadgen.run_load(auth=server.auth, acct=server.acct, secret=SECRET.encode(), cards=cards,
                                mode=mode, window=sizes["window"], sockets=4, duration=sizes["seconds"],
                                warmup=sizes["warmup"], timeout=2.0)

    before = server.counters()
    summary = benchmark.pedantic(run, rounds=1, iterations=1)
    after = server.counters()
    counts = summary["counts"]
    problem = (counts["answered"] == 0 or counts["bad"] or counts["late"] or counts["rejects"]
               or counts["timeouts"])
    assert not problem, f"{mode}: {counts}\nper request: {summary['ops']}\nserver log:\n{server.log()}"
    info = benchmark.extra_info
    info.update({"mode": mode, "cards": len(cards), "in_flight": summary["in_flight"], "workers": 1,
                 "implementation": server.ready.get("implementation"), "durable": True,
                 "requests_per_s": summary["requests_per_s"], "flows_per_s": summary["flows_per_s"],
                 "p50_us": summary["latency_us"]["p50"], "p99_us": summary["latency_us"]["p99"],
                 "p99.9_us": summary["latency_us"]["p99.9"]})
    for op, o in summary["ops"].items():
        info[f"{op}_per_s"] = o["per_s"]
        info[f"{op}_p99_us"] = o["latency_us"]["p99"]
    if before and after and after["batches"] > before["batches"]:
        info["batch_avg"] = round((after["replies"] - before["replies"]) / (after["batches"] - before["batches"]), 1)
    assert after["peak_rss_mib"] > 0  # the worker's VmHWM, which bench.compare reports per cell
    info["worker_peak_rss_mib"] = after["peak_rss_mib"]
    # Journal appends, which bench.compare reports as the share of batches journaled: read from
    # /metrics, and only ever made by the write lane (card authentication writes nothing).
    appends = after["journal_appends"] - before["journal_appends"]
    assert appends >= 0 and (appends == 0 or mode != "card-auth")
    info["journal_appends"] = appends


@contextlib.contextmanager
def _responder(secret: bytes, answer):
    """A UDP server on 127.0.0.1, in a thread, replying to each request with `answer(request)`:
    (code, signing secret). Yields its address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def respond():
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(4096)
            except TimeoutError:
                continue
            req = packet.parse_request(data, secret)
            code, key = answer(req)
            sock.sendto(packet.encode_response(req, code, [], key), addr)

    thread = threading.Thread(target=respond, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_loadgen_counts_replies_that_fail_verification():
    """A responder that signs every other reply with the wrong secret: those are `bad`, never answers."""
    secret = b"responder-secret-0123"
    sent = itertools.count()
    with _responder(secret, lambda req: (d.Code.ACCESS_ACCEPT,
                                         secret if next(sent) % 2 == 0 else b"some-other-secret")) as address:
        summary = loadgen.run_load(auth=address, acct=address, secret=secret,
                                   cards=[(b"45-000000001", b"1234567890")], mode="card-auth", window=1,
                                   sockets=1, duration=0.5, warmup=0.0, timeout=0.05)
    counts = summary["counts"]
    assert counts["ok"] > 0 and counts["bad"] > 0, counts
    assert counts["timeouts"] > 0, counts  # a request whose only reply failed is still unanswered


def test_loadgen_conf_ids_are_unique_and_spread_like_a_gateways():
    """Session keys are filed by h323-conf-id: a sequential one would fill one run of the server's
    key space per socket, which no real gateway does, and flatter the store."""
    secret = b"responder-secret-0123"
    conf_ids: list[str] = []

    def answer(req):
        if req.status_type == d.AcctStatus.START:
            conf_ids.append(req.conf_id)
        return d.Code.ACCOUNTING_RESPONSE, secret

    with _responder(secret, answer) as address:
        loadgen.run_load(auth=address, acct=address, secret=secret, cards=[(b"45-000000001", b"1234567890")],
                         mode="acct", window=1, sockets=1, duration=0.5, warmup=0.0, timeout=0.2)
    assert len(conf_ids) > 50
    assert len(set(conf_ids)) == len(conf_ids)
    assert all(len(c) == 35 and all(len(w) == 8 for w in c.split(" ")) for c in conf_ids), conf_ids[:3]
    firsts = [int(c[:8], 16) for c in conf_ids]
    rising = sum(b > a for a, b in zip(firsts, firsts[1:])) / (len(firsts) - 1)
    assert 0.3 < rising < 0.7, f"first words in send order rise {rising:.0%} of the time: {conf_ids[:5]}"
    assert max(firsts) - min(firsts) > 1 << 30
