"""Counters and a latency histogram, shared by forked workers, served by the supervisor.

Cost model: a worker adds into a plain `array('Q')` while it handles a batch and copies that array
into its own row of a shared-memory block once per batch (`Recorder.publish`, one memcpy). No
locks, no per-packet syscalls, no prometheus_client objects on the hot path. The supervisor sums
the rows when `/metrics` is scraped.

Each worker slot owns one row; a row only ever grows. A restarted worker takes over its slot and
starts from the row's current values (`Recorder.__init__` reads them back), so counters never go
backwards across a crash, which Prometheus would misread as a reset.

Every counted drop may also be logged, through `RateLimitedLog`, so a flood of garbage shows up
as a counter and a few lines, not as a full disk.

The block is an anonymous shared mapping (`mmap(-1, ...)`, MAP_SHARED) created by the supervisor
before it forks: no file, no name to clean up, and it dies with the last process holding it.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import socket
import threading
import time
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from .dictionary import Code

log = logging.getLogger(__name__)

#: `radcore_requests_received_total{type}`: by the code octet, before any validation.
PACKET_TYPES = ("access_request", "accounting_request", "status_server", "other")
#: `radcore_replies_total{type}`: what we sent; answers to Status-Server are counted apart.
REPLY_TYPES = ("access_accept", "access_reject", "access_challenge", "accounting_response",
               "status_server")
#: `radcore_dropped_total{reason}`: every PacketError `reason` of the codecs, plus the server's own.
#: A reason not listed here is counted as "other" (the row layout is fixed before fork).
DROP_REASONS = (
    "unknown_client",          # source address matches no [[clients]] entry
    "wrong_port",              # e.g. Accounting-Request on the auth port
    "short", "bad_length", "truncated", "bad_attribute", "bad_code", "bad_password", "malformed",
    "bad_authenticator", "bad_message_authenticator", "missing_message_authenticator",
    "not_recorded",            # accounting with no store to record it in (NoStoreHandler)
    "no_reply",                # the handler chose not to answer (e.g. failed durable commit)
    "commit_failed",           # handler-reported: the batch could not be made durable
    "handler_error",           # the handler raised: the whole batch goes unanswered
    "encode_error",            # the handler's reply could not be encoded
    "other",
)
#: Histogram bucket upper bounds in seconds, 25 µs .. 1 s (+Inf is implicit).
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
                   50e-3, 100e-3, 250e-3, 500e-3, 1.0)
SCALARS = ("duplicates", "send_errors", "batches", "internal_errors", "worker_restarts", "fast_answers",
           # radcore.throttle.PinThrottle: PIN-only guessing, per line
           "pin_only_unknown", "pin_only_throttled", "pin_only_lines_forgotten",
           # radcore.journal: batches made durable by an append, and the commits that caught up
           "journal_appends", "checkpoints")

# Row layout: offsets of each group in a row of unsigned 64-bit integers.
_RECV = 0
_REPLY = _RECV + len(PACKET_TYPES)
_DROP = _REPLY + len(REPLY_TYPES)
_SCALAR = _DROP + len(DROP_REASONS)
_HIST = _SCALAR + len(SCALARS)          # len(LATENCY_BUCKETS) + 1 non-cumulative counts
_SUM_NS = _HIST + len(LATENCY_BUCKETS) + 1
ROW = _SUM_NS + 1

_RECV_INDEX = {Code.ACCESS_REQUEST: _RECV, Code.ACCOUNTING_REQUEST: _RECV + 1,
               Code.STATUS_SERVER: _RECV + 2}
_REPLY_INDEX = {Code.ACCESS_ACCEPT: _REPLY, Code.ACCESS_REJECT: _REPLY + 1,
                Code.ACCESS_CHALLENGE: _REPLY + 2, Code.ACCOUNTING_RESPONSE: _REPLY + 3}
_DROP_INDEX = {reason: _DROP + i for i, reason in enumerate(DROP_REASONS)}
_SCALAR_INDEX = {name: _SCALAR + i for i, name in enumerate(SCALARS)}


class SharedMetrics:
    """The shared block: `slots` worker rows plus one supervisor row. Create before forking."""

    def __init__(self, slots: int, *, implementation: str = ""):
        self.slots = slots
        self.implementation = implementation
        self._map = mmap.mmap(-1, (slots + 1) * ROW * 8)
        self._view = memoryview(self._map).cast("Q")
        self.supervisor = Recorder(self, slots)

    def recorder(self, slot: int) -> Recorder:
        """The recorder for a worker slot; call it in the worker, after fork."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} outside 0..{self.slots - 1}")
        return Recorder(self, slot)

    def totals(self) -> array:
        """Sum of every row, as one row."""
        out = array("Q", bytes(ROW * 8))
        view = self._view
        for slot in range(self.slots + 1):
            base = slot * ROW
            row = view[base:base + ROW]
            for i in range(ROW):
                out[i] += row[i]
        return out

    def snapshot(self) -> dict:
        """Totals as plain data, for tests and the exposition: nested dicts of ints."""
        t = self.totals()
        counts = [t[_HIST + i] for i in range(len(LATENCY_BUCKETS) + 1)]
        return {
            "received": {name: t[_RECV + i] for i, name in enumerate(PACKET_TYPES)},
            "replies": {name: t[_REPLY + i] for i, name in enumerate(REPLY_TYPES)},
            "dropped": {name: t[_DROP + i] for i, name in enumerate(DROP_REASONS)},
            **{name: t[_SCALAR + i] for i, name in enumerate(SCALARS)},
            "latency": {"buckets": dict(zip(LATENCY_BUCKETS + (float("inf"),), counts, strict=True)),
                        "count": sum(counts), "sum_seconds": t[_SUM_NS] / 1e9},
        }

    def render(self) -> bytes:
        """Prometheus text exposition of the current totals."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)

    def serve(self, host: str, port: int) -> MetricsServer:
        """Bind `GET /metrics` (port 0 picks a free port, see `.port`); `.start()` begins serving."""
        return MetricsServer(self, host, port)

    def close(self) -> None:
        self.supervisor = None  # type: ignore[assignment]
        self._view.release()
        self._map.close()


class Recorder:
    """One process's counters: add locally per event, `publish()` once per batch.

    The hot path indexes `counts` through the small helpers below; they are plain method calls on
    a slotted object, with no allocation.
    """

    __slots__ = ("counts", "_view", "_base")

    def __init__(self, shared: SharedMetrics, slot: int):
        self._base = slot * ROW
        self._view = shared._view
        # Continue from what this slot's previous process published (see module docstring).
        self.counts = array("Q", self._view[self._base:self._base + ROW].tobytes())

    def received(self, code: int, n: int = 1) -> None:
        self.counts[_RECV_INDEX.get(code, _RECV + 3)] += n

    def replied(self, code: int, n: int = 1) -> None:
        self.counts[_REPLY_INDEX.get(code, _REPLY + 1)] += n

    def status_replied(self, n: int = 1) -> None:
        self.counts[_REPLY + 4] += n

    def dropped(self, reason: str, n: int = 1) -> None:
        self.counts[_DROP_INDEX.get(reason, _DROP + len(DROP_REASONS) - 1)] += n

    def add(self, name: str, n: int = 1) -> None:
        """One of `SCALARS`."""
        self.counts[_SCALAR_INDEX[name]] += n

    def observe(self, seconds: float, n: int) -> None:
        """Attribute one batch's handling time to each of its `n` answered packets."""
        if n <= 0:
            return
        self.counts[_HIST + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += n
        self.counts[_SUM_NS] += int(seconds * 1e9) * n

    def publish(self) -> None:
        """Copy the local counts into the shared row: one memcpy, visible to the next scrape."""
        self._view[self._base:self._base + ROW] = self.counts


class RateLimitedLog:
    """At most one record per key per interval; the next one says how many were suppressed.

    Keys are reasons, never addresses, so a flood from random sources cannot grow the table.
    Arguments stay lazy (`%s`): nothing is formatted for a suppressed or disabled record.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0):
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: int, key: str, msg: str, *args, exc_info=None) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg, args = msg + " (%d similar suppressed)", args + (suppressed,)
        self.logger.log(level, msg, *args, exc_info=exc_info)


class _Collector:
    """Turns a snapshot into metric families for prometheus_client's text exposition."""

    def __init__(self, shared: SharedMetrics):
        self.shared = shared

    def collect(self):
        snap = self.shared.snapshot()
        received = CounterMetricFamily("radcore_requests_received",
                                       "Datagrams received from any source, by code octet", labels=["type"])
        for name, value in snap["received"].items():
            received.add_metric([name], value)
        replies = CounterMetricFamily("radcore_replies", "Replies sent, by type", labels=["type"])
        for name, value in snap["replies"].items():
            replies.add_metric([name], value)
        dropped = CounterMetricFamily("radcore_dropped",
                                      "Datagrams answered with silence, by reason", labels=["reason"])
        for name, value in snap["dropped"].items():
            dropped.add_metric([name], value)
        yield received
        yield replies
        yield dropped
        helps = {"duplicates": "Retransmissions answered from the duplicate cache or within a batch",
                 "send_errors": "Replies the kernel refused to send",
                 "batches": "Batches handled by the workers",
                 "internal_errors": "Batches that hit an unexpected exception",
                 "worker_restarts": "Workers restarted after an unexpected exit",
                 "fast_answers": ("Requests answered by the C lanes (card authentication, number authorization, "
                                  "accounting); also counted in replies"),
                 "journal_appends": ("Batches of the write lane made durable by an append to the write-ahead "
                                     "journal while requests were waiting, their LMDB commit deferred"),
                 "checkpoints": "LMDB commits of a write transaction that held journaled batches",
                 "pin_only_unknown": "Unknown PINs from PIN-only lines, each one costing its line a token",
                 "pin_only_throttled": ("PIN-only Access-Requests rejected before their PIN was looked up, "
                                        "because their line had no token left"),
                 "pin_only_lines_forgotten": ("Throttled lines forgotten to bound memory (each gets a full "
                                              "bucket back)")}
        for name in SCALARS:
            yield CounterMetricFamily(f"radcore_{name}", helps[name], value=snap[name])
        lat = snap["latency"]
        cumulative, buckets = 0, []
        for bound, count in lat["buckets"].items():
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily("radcore_request_duration_seconds",
                                    "Batch handling time attributed to each answered packet",
                                    buckets=buckets, sum_value=lat["sum_seconds"])
        workers = GaugeMetricFamily("radcore_workers", "Configured RADIUS worker processes",
                                    labels=["implementation"])
        workers.add_metric([self.shared.implementation], self.shared.slots)
        yield workers


class MetricsServer(ThreadingHTTPServer):
    """`GET /metrics` in the supervisor, on a daemon thread; everything else is 404.

    Binding (the constructor) and serving (`start`) are separate so the supervisor can fail on a
    busy port before it forks, yet start the thread only after the first fork.
    """

    daemon_threads = True

    def __init__(self, shared: SharedMetrics, host: str, port: int):
        self.shared = shared
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _MetricsHandler)
        self.port = self.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()


class _MetricsHandler(BaseHTTPRequestHandler):
    timeout = 10  # a stalled scraper must not hold a thread forever

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        body = self.server.shared.render()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (signature from http.server)
        """Scrapes are not logged: a 15 s scrape interval would drown the real messages."""
