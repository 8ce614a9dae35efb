"""Smoke version of `python -m bench.bench_generation`: the same code paths on a few thousand cards.

Generation and export run in child processes exactly as in the full benchmark (durable store, peak
RSS from the child, every write transaction timed), and one short latency run starts a real radcore
server, measures accounting idle and during a small generation in the same data directory, and checks
that the report renders. Nothing asserts on speed (TESTING.md: never on wall-clock figures in tests);
the checks are that every request was answered, every exported row is there, and the figures exist.

Run: .venv/bin/python -m pytest bench/test_bench_generation.py --benchmark-disable
"""

from __future__ import annotations

import argparse
import json

import pytest

from bench.bench_generation import _parse_configs
from bench.generation_child import head_generation_source
from bench.generation_latency import latency_run
from bench.generation_report import markdown
from bench.generation_runs import bench_generation_and_export
from bench.generation_stats import machine_info, percentile

CARDS = 2_000


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


def test_generation_and_export_smoke(workdir, benchmark):
    result = benchmark.pedantic(
        lambda: bench_generation_and_export(workdir / "run", cards=CARDS, small=500, chunk_size=500,
                                            lxml_path=None, say=lambda text: None),
        setup=lambda: (workdir / "run").mkdir(exist_ok=True), rounds=1, iterations=1)
    gen = result["generation"]
    assert gen["cards"] == CARDS and gen["sync"] is True and gen["code"] == "current"
    assert gen["txn"]["count"] == 1 + CARDS // 500           # validation txn + one per chunk
    assert gen["memory"]["peak_rss_mib"] > 0 and gen["ru_maxrss_mib"] > 0
    assert gen["store"]["cards"]["entries"] == CARDS and gen["store"]["pins"]["entries"] == CARDS
    assert gen["data_mdb_bytes"] > 0
    exports = {(e["fmt"], e["rows"]): e for e in result["exports"]}
    assert set(exports) == {("xlsx", 500), ("xlsx", CARDS), ("csv", 500), ("csv", CARDS)}
    for e in exports.values():
        assert e["file_bytes"] > 0 and e["sheets"] == 1 and e["memory"]["peak_anon_mib"] > 0


def test_accounting_and_auth_during_generation_smoke(workdir):
    acct = latency_run(workdir, mode="acct", cards=5_000, chunk_size=500, variant="same", rate=200,
                       idle_seconds=1.0, after_seconds=0.5, workers=1, pin_run=1_000, say=lambda text: None)
    assert acct["idle"]["count"] > 0 and acct["during"]["count"] > 0
    assert acct["idle"]["lost"] == 0 and acct["during"]["lost"] == 0 and acct["bad_replies"] == 0
    assert acct["generation"]["txn"]["count"] == 1 + 5_000 // 500
    assert acct["generation"]["pin_run"] == 1_000
    assert acct["p99_ratio"] is not None and "server_log_tail" not in acct

    head = head_generation_source(workdir / "generation_head.py")
    if head is None:
        pytest.skip("no git: the HEAD baseline of radcore/generation.py is unavailable")
    auth = latency_run(workdir, mode="auth", cards=5_000, chunk_size=0, variant="other", rate=0,
                       idle_seconds=1.0, after_seconds=0.5, workers=1, pause_factor=1.0, code="head",
                       head_path=head["path"], say=lambda text: None)
    assert auth["idle"]["replies"] > 0 and auth["idle"]["accepts"] == auth["idle"]["replies"]
    assert auth["generation"]["pause_factor"] == 1.0 and auth["generation"]["code"] == "head"
    assert auth["generation"]["generation_sha256"] == head["sha256"]

    doc = {"command": "smoke", "machine": machine_info(), "notes": ["smoke"],
           "params": {"repeat": 1, "chunk_size": 0, "latency_cards": 5_000, "rate": 200, "workers": 1},
           "generation": [], "exports": [], "latency": [dict(acct, rep=1), dict(auth, rep=1)]}
    text = markdown(doc)
    assert "| working-tree generation.py: same store, PIN_RUN 1,000 | 500 | 1 |" in text
    assert "baseline generation.py: other store (no shared lock), paced x1" in text
    assert doc["latency"][0]["p99_ratio_pooled"] is not None
    json.dumps(doc)


def test_percentile_and_config_parsing():
    assert percentile([], 99) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile(list(range(1, 101)), 100) == 100
    assert _parse_configs("same:2000,other:500:p3:head, nosync,same::r1000:p1:n5,same::n0") == [
        {"variant": "same", "chunk_size": 2000, "pause_factor": 0.0, "pin_run": 0, "nice": 10, "code": "current"},
        {"variant": "other", "chunk_size": 500, "pause_factor": 3.0, "pin_run": 0, "nice": 10, "code": "head"},
        {"variant": "nosync", "chunk_size": 0, "pause_factor": 0.0, "pin_run": 0, "nice": 10, "code": "current"},
        {"variant": "same", "chunk_size": 0, "pause_factor": 1.0, "pin_run": 1000, "nice": 5, "code": "current"},
        {"variant": "same", "chunk_size": 0, "pause_factor": 0.0, "pin_run": 0, "nice": 0, "code": "current"}]
    for bad in ("elsewhere:10", "same:10:x3", "same:10:r5:head"):
        with pytest.raises(argparse.ArgumentTypeError):
            _parse_configs(bad)
