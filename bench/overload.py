"""Overload: radcore offered twice what it can do, then relieved. Does it keep answering, stay small,
and recover within seconds?

    .venv/bin/python bench/overload.py                     # 1 worker, 5 s / 15 s / 10 s phases
    .venv/bin/python bench/overload.py --workers 2 --factor 3 --overload-seconds 60 \\
        --json bench/results/overload.json

The load is card authentication (User-Name + PIN + Message-Authenticator; the server checks the
PIN, writes the card's last use and commits: the real per-request cost, fsync included), spread
over many cards and 256 UDP sockets. Phases, on one server started here on a fresh store:

1. capacity: a closed loop (a new request as soon as one is answered, `--window` in flight) for
   `--capacity-seconds`; C = answered requests per second.
2. overload: an open loop at `--factor` x C for `--overload-seconds`, as gateways do: they do not
   slow down because the server is slow. Reported: offered and answered rates, the share answered,
   latency of the answered (p50/p99), the server's resident memory over the phase (sampled every
   0.25 s over the supervisor and its workers), datagrams the kernel dropped for a full receive
   buffer (`Udp RcvbufErrors`, system-wide).
3. recovery: the offered load drops to `--recovery-load` x C for `--recovery-seconds`. Recovery
   time = from the drop until both the queue has drained (a reply comes back within 100 ms) and no
   request goes unanswered any more.

A request counts as answered if its reply arrives before its (socket, Identifier) slot is reused
(256 sockets x 256 Identifiers at the offered rate: about 4 s at 16,000/s); a NAS would have given
up on it by then anyway. The server's own count of replies sent (from /metrics) is reported too.
The client is single-threaded Python; `client_cpu_share` in the output says how close it came to a
full core (above ~0.9 the offered load is limited by the client, and the figures say so).
tests/test_overload_smoke.py runs the same code for a few seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import helpers_load as hl

from radcore import dictionary as d
from radcore import fastpath
from radcore.store import CardStatus

SOCKETS = 256
SLOTS = SOCKETS * 256


def udp_rcvbuf_errors() -> int:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


class Load:
    """Access-Requests for many cards, built as they are sent, from SOCKETS sockets; replies matched
    by (socket, Identifier) and a verified Response Authenticator."""

    def __init__(self, ports: dict[str, int], pins: dict[int, str], secret: str = hl.SECRET):
        self.port = ports[hl.AUTH]
        self.secret = secret.encode()
        self.socks = []
        for _ in range(SOCKETS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.index = {sock.fileno(): i for i, sock in enumerate(self.socks)}
        self.poller = select.epoll()
        for sock in self.socks:
            self.poller.register(sock.fileno(), select.EPOLLIN)
        self.cards = [(hl.number(serial).encode(), pin.encode()) for serial, pin in sorted(pins.items())]
        self.next = 0
        self.slot_packet = [-1] * SLOTS        # slot -> number of the request last sent there
        self.slot_auth = [b""] * SLOTS         # slot -> its Request Authenticator
        self.sent_at: list[float] = []         # request number -> send time
        self.latency: dict[int, float] = {}    # request number -> seconds to its reply

    def close(self) -> None:
        self.poller.close()
        for sock in self.socks:
            sock.close()

    def send_one(self) -> int:
        """Request number n leaves on socket n % SOCKETS with Identifier (n // SOCKETS) % 256."""
        n = self.next
        self.next += 1
        user, pin = self.cards[n % len(self.cards)]
        auth = os.urandom(16)
        data = fastpath.encode_access_request((n // SOCKETS) % 256, auth, [
            (d.USER_NAME, user), (d.NAS_IP_ADDRESS, b"\xc0\x00\x02\x0a")], self.secret, password=pin)
        slot = (n % SOCKETS) * 256 + data[1]
        self.slot_packet[slot], self.slot_auth[slot] = n, auth
        self.sent_at.append(time.monotonic())
        try:
            self.socks[n % SOCKETS].sendto(data, ("127.0.0.1", self.port))
        except BlockingIOError:
            pass  # the client's own send buffer is full: that request is lost on our side
        return n

    def receive(self, wait: float) -> list[int]:
        """Numbers of the requests answered now (waiting up to `wait` for the first reply)."""
        got = []
        ready = self.poller.poll(max(0.0, wait))
        now = time.monotonic()
        for fd, _ in ready:
            i = self.index[fd]
            sock = self.socks[i]
            while True:
                try:
                    raw = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                if len(raw) < 20:
                    continue
                slot = i * 256 + raw[1]
                n = self.slot_packet[slot]
                if n < 0 or n in self.latency:
                    continue
                if hashlib.md5(raw[:4] + self.slot_auth[slot] + raw[20:] + self.secret).digest() != raw[4:20]:
                    continue  # a late reply to an older request in this slot
                self.latency[n] = now - self.sent_at[n]
                got.append(n)
        return got

    def settle(self, seconds: float) -> None:
        """Collect replies for `seconds` more (one `receive` returns after the first batch)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.receive(end - time.monotonic())

    # -- phases ----------------------------------------------------------------------------------

    def closed_loop(self, seconds: float, window: int) -> dict:
        """`window` requests in flight; a lost one gives its place back after 0.5 s."""
        first = self.next
        outstanding: dict[int, float] = {}
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            while len(outstanding) < window:
                outstanding[self.send_one()] = time.monotonic()
            for n in self.receive(0.01):
                outstanding.pop(n, None)
            cutoff = time.monotonic() - 0.5
            for n in [n for n, t in outstanding.items() if t < cutoff]:
                del outstanding[n]
        elapsed = time.monotonic() - start
        lat = sorted(self.latency[n] for n in range(first, self.next) if n in self.latency)
        return {"seconds": elapsed, "answered_per_s": len(lat) / elapsed, "window": window,
                "p50_ms": _pct(lat, 50) * 1e3, "p99_ms": _pct(lat, 99) * 1e3}

    def open_loop(self, rate: float, seconds: float, sample=None) -> tuple[int, int]:
        """Send at `rate`/s for `seconds`, whatever comes back; returns (first, last + 1) numbers."""
        first = self.next
        start = time.monotonic()
        next_sample = start
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            due = int(rate * (now - start)) - (self.next - first)
            for _ in range(min(due, 2000)):
                self.send_one()
            if sample is not None and now >= next_sample:
                sample(now - start)
                next_sample = now + 0.25
            self.receive(0.001)
        return first, self.next


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def run(workdir: Path, *, workers: int = 1, cards: int = 2000, factor: float = 2.0,
        capacity_seconds: float = 5.0, overload_seconds: float = 15.0, recovery_seconds: float = 10.0,
        recovery_load: float = 0.25, window: int = 1024, log=print) -> dict:
    """All three phases against a fresh server in `workdir`; returns the figures."""
    pins = hl.provision(workdir, quantity=cards, face_balance=10**12, initial_status=CardStatus.ACTIVATED,
                        max_concurrent_calls=1000)
    config = hl.write_config(workdir, workers=workers)
    result: dict = {"workers": workers, "factor": factor, "codec": fastpath.IMPLEMENTATION}
    with hl.prepaid_server(config) as server:
        pids = [server.pid] + hl.worker_pids(server.pid)
        rss0 = hl.rss_kib(pids)
        load = Load({hl.AUTH: server.auth_port}, pins)
        cpu0 = time.process_time()
        try:
            cap = load.closed_loop(capacity_seconds, window)
            capacity = cap["answered_per_s"]
            result["capacity"] = cap
            log(f"capacity: {capacity:,.0f} answered/s (closed loop, {window} in flight, "
                f"p50 {cap['p50_ms']:.1f} ms, p99 {cap['p99_ms']:.1f} ms)")

            rss: list[tuple[float, int]] = []
            replies0 = _server_replies(server)
            drops0 = udp_rcvbuf_errors()
            wall0, cpu1 = time.monotonic(), time.process_time()
            first, last = load.open_loop(factor * capacity, overload_seconds,
                                         sample=lambda t: rss.append((t, hl.rss_kib(pids))))
            client_share = (time.process_time() - cpu1) / (time.monotonic() - wall0)
            load.settle(0.3)
            drops = udp_rcvbuf_errors() - drops0
            server_replies = _server_replies(server) - replies0
            lat = sorted(load.latency[n] for n in range(first, last) if n in load.latency)
            answered = len(lat)
            offered = last - first
            over = {"offered_per_s": offered / overload_seconds,
                    "answered_per_s": answered / overload_seconds,
                    "server_replies_per_s": server_replies / (time.monotonic() - wall0),
                    "answered_vs_capacity": answered / overload_seconds / capacity,
                    "answered_share": answered / max(1, offered), "p50_ms": _pct(lat, 50) * 1e3,
                    "p99_ms": _pct(lat, 99) * 1e3, "kernel_rcvbuf_drops": drops,
                    "rss_kib_before": rss0, "rss_kib_peak": max(r for _, r in rss),
                    "rss_kib_end": rss[-1][1], "rss_kib_samples": rss, "client_cpu_share": client_share}
            result["overload"] = over
            log(f"overload x{factor}: offered {over['offered_per_s']:,.0f}/s, answered "
                f"{over['answered_per_s']:,.0f}/s ({over['answered_share']:.0%} of offered, "
                f"{over['answered_vs_capacity']:.0%} of capacity; server sent "
                f"{over['server_replies_per_s']:,.0f}/s), p50 {over['p50_ms']:.1f} ms, "
                f"p99 {over['p99_ms']:.1f} ms, kernel drops {drops:,}, server RSS {rss0 / 1024:.1f} -> "
                f"peak {over['rss_kib_peak'] / 1024:.1f} MiB, client CPU {client_share:.0%}")

            drop_at = time.monotonic()
            first, last = load.open_loop(recovery_load * capacity, recovery_seconds)
            load.settle(0.3)
            rec = recovery(load, first, last, drop_at)
            rec["rss_kib_after"] = hl.rss_kib(pids)
            result["recovery"] = rec
            log(f"recovery at x{recovery_load}: queue drained {rec['drained_seconds']:.2f} s after the drop, "
                f"every request answered from {rec['recovery_seconds']:.2f} s on (then p50 "
                f"{rec['p50_ms_after']:.1f} ms, p99 {rec['p99_ms_after']:.1f} ms); last second answered "
                f"{rec['last_second_share']:.0%}; server RSS {rec['rss_kib_after'] / 1024:.1f} MiB")
        finally:
            result["client_cpu_seconds"] = time.process_time() - cpu0
            load.close()
        metrics = server.metrics()
        result["worker_restarts"] = metrics.get("radcore_worker_restarts_total", 0)
        result["server_alive"] = server.proc.poll() is None
    return result


def _server_replies(server) -> float:
    metrics = server.metrics()
    return sum(v for k, v in metrics.items() if k.startswith("radcore_replies_total"))


def recovery(load: Load, first: int, last: int, drop_at: float) -> dict:
    """Recovery time after the load drop: the later of (a) the first reply that came back within
    100 ms, i.e. the queue built up during the overload has drained, and (b) the last request that
    got no answer at all. From then on every request is answered; the latency figures of the time
    after that point are reported (an fsync hiccup may still delay one, which is not overload)."""
    sent = [(load.sent_at[n] - drop_at, load.latency.get(n)) for n in range(first, last)]
    drained = min((t + lat for t, lat in sent if lat is not None and lat <= 0.1), default=math.inf)
    lost = max((t for t, lat in sent if lat is None), default=0.0)
    recovered = max(drained, lost)
    after = sorted(lat for t, lat in sent if t >= recovered and lat is not None)
    tail = [lat for t, lat in sent if t >= (sent[-1][0] if sent else 0.0) - 1.0]
    return {"recovery_seconds": recovered, "drained_seconds": drained, "last_loss_seconds": lost,
            "p50_ms_after": _pct(after, 50) * 1e3, "p99_ms_after": _pct(after, 99) * 1e3,
            "last_second_share": sum(x is not None for x in tail) / max(1, len(tail)), "probes": len(sent)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/overload.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--factor", type=float, default=2.0, help="overload = factor x measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--overload-seconds", type=float, default=15.0)
    parser.add_argument("--recovery-seconds", type=float, default=10.0)
    parser.add_argument("--recovery-load", type=float, default=0.25)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radcore-overload-") as tmp:
        result = run(Path(tmp), workers=args.workers, cards=args.cards, factor=args.factor,
                     capacity_seconds=args.capacity_seconds, overload_seconds=args.overload_seconds,
                     recovery_seconds=args.recovery_seconds, recovery_load=args.recovery_load,
                     window=args.window)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["server_alive"] and not result["worker_restarts"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
