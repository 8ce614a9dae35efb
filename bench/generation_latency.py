"""Section 3: a real server, an open-loop accounting client and a closed-loop auth client, measured
idle and while a child process generates a series."""

from __future__ import annotations

import bisect
import json
import os
import selectors
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from bench.generation_child import GEN_SERIES, MAP_SIZE_MB, Child, provision_base
from bench.generation_report import TARGET_RATIO, gen_label
from bench.generation_stats import dist_ms, mono, ms, percentile
from bench.procs import launch, python_env, terminate, wait_ready

SECRET = "bench-generation-secret-0123456789"
CALLED = b"442079460000"


def write_server_config(directory: Path, data_dir: Path, *, workers: int) -> Path:
    """Like tests/helpers_server.write_config (loopback, every port 0), plus map_size_mb and info logs."""
    text = "\n".join([
        "[server]", f"data_dir = {json.dumps(str(data_dir))}", f"workers = {workers}",
        'auth_listen = "127.0.0.1:0"', 'acct_listen = "127.0.0.1:0"', 'metrics_listen = "127.0.0.1:0"',
        "duplicate_cache_seconds = 30", 'log_level = "info"', f"map_size_mb = {MAP_SIZE_MB}", "",
        "[control]", 'grpc_listen = "127.0.0.1:0"', 'portal_listen = "127.0.0.1:0"', "",
        "[[clients]]", 'name = "bench"', 'network = "127.0.0.1"', f"secret = {json.dumps(SECRET)}",
        'profile = "cisco"', ""])
    path = directory / "radcore.toml"
    path.write_text(text)
    return path


class Server:
    """`python -m radcore.supervisor --config X --ready-file Y --handler radcore.handler:make_handler`,
    stopped by PID (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, config: Path):
        self.ready_file = config.parent / "ready.json"
        self.log_path = config.parent / "server.log"
        self.proc, self._log = launch(
            [sys.executable, "-m", "radcore.supervisor", "--config", str(config), "--ready-file",
             str(self.ready_file), "--handler", "radcore.handler:make_handler"],
            self.log_path, cwd=config.parent, env=python_env())
        self.ready: dict[str, Any] = {}

    def __enter__(self) -> Self:
        try:
            wait_ready(self.proc, self.ready_file.exists, what="radcore", timeout=30, log=self.log,
                       stop=self.stop)
            self.ready = json.loads(self.ready_file.read_text())  # the supervisor renames it into place
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        try:
            terminate(self.proc, 15)
        finally:
            self._log.close()


class _Sockets:
    def __init__(self, count: int):
        self.socks = []
        self.sel = selectors.DefaultSelector()
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ, i)

    def close(self) -> None:
        self.sel.close()
        for s in self.socks:
            s.close()

    def receive(self, timeout: float) -> Iterator[tuple[int, bytes, float]]:
        """(socket index, datagram, arrival time) for everything that arrives within `timeout`."""
        for key, _ in self.sel.select(timeout):
            sock = self.socks[key.data]
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                yield key.data, data, mono()


class AcctLoad:
    """Open loop: request k is due at t0 + k/rate; even k = Start of session k//2, odd k = its Stop
    (Acct-Session-Time 30), both on source port session % sockets, so one worker sees them in order.
    A late client sends what is due at once (and records how late it was); latency is send -> reply."""

    def __init__(self, port: int, *, rate: float, sockets: int = 8, cards: list[str]):
        self.port = port
        self.interval = 1.0 / rate
        self.net = _Sockets(sockets)
        self.cards = cards
        self.secret = SECRET.encode()
        self.ident = [0] * sockets
        self.pending: dict[tuple[int, int], tuple[float, float]] = {}   # (sock, id) -> (due, sent)
        self.samples: list[tuple[float, float, float]] = []              # (due, sent, latency)
        self.lost: list[float] = []                                      # sent times never answered
        self.bad = 0
        self.k = 0
        self.t0 = 0.0
        self.run_tag = os.urandom(3).hex()

    def _packet(self, k: int, ident: int) -> bytes:
        from radcore import dictionary as d
        from radcore import packet
        session = k // 2
        stop = k % 2
        attrs = [(d.USER_NAME, self.cards[session % len(self.cards)].encode()),
                 (d.NAS_IP_ADDRESS, bytes([192, 0, 2, 30])),
                 (d.ACCT_STATUS_TYPE, (2 if stop else 1).to_bytes(4, "big")),
                 (d.ACCT_SESSION_ID, f"gen-{self.run_tag}-{session}".encode()),
                 (d.CALLED_STATION_ID, CALLED)]
        if stop:
            attrs.append((d.ACCT_SESSION_TIME, (30).to_bytes(4, "big")))
        return packet.encode_accounting_request(ident, attrs, self.secret)

    def run(self, until: Callable[[float], bool]) -> None:
        """Send and receive until `until(now)` is true."""
        if not self.t0:
            self.t0 = mono()
        nsock = len(self.net.socks)
        while True:
            now = mono()
            if until(now):
                return
            sent = 0
            while self.t0 + self.k * self.interval <= now and sent < 64:
                due = self.t0 + self.k * self.interval
                s = (self.k // 2) % nsock
                ident = self.ident[s]
                self.ident[s] = (ident + 1) & 0xFF
                data = self._packet(self.k, ident)
                old = self.pending.pop((s, ident), None)
                if old is not None:
                    self.lost.append(old[1])
                t = mono()
                self.net.socks[s].sendto(data, ("127.0.0.1", self.port))
                self.pending[(s, ident)] = (due, t)
                self.k += 1
                sent += 1
            wait = max(0.0, min(0.01, self.t0 + self.k * self.interval - mono()))
            self._receive(wait)

    def _receive(self, timeout: float) -> None:
        for s, data, t in self.net.receive(timeout):
            entry = self.pending.pop((s, data[1]), None) if len(data) >= 20 else None
            if entry is None or data[0] != 5:  # 5 = Accounting-Response
                self.bad += 1
                continue
            self.samples.append((entry[0], entry[1], t - entry[1]))

    def drain(self, seconds: float = 2.0) -> None:
        deadline = mono() + seconds
        while self.pending and mono() < deadline:
            self._receive(0.05)
        self.lost.extend(sent for _, sent in self.pending.values())
        self.pending.clear()

    def close(self) -> None:
        self.net.close()

    def window(self, start: float, end: float) -> dict[str, Any]:
        lat = [lat for _, sent, lat in self.samples if start <= sent < end]
        late = [sent - due for due, sent, _ in self.samples if start <= sent < end]
        out = dist_ms(lat)
        out["seconds"] = round(end - start, 2)
        out["lost"] = sum(1 for t in self.lost if start <= t < end)
        out["client_late_p99_ms"] = ms(percentile(late, 99))
        return out


class AuthLoad:
    """Closed loop: `window` outstanding card authentications (User-Name + PIN + Message-Authenticator),
    one per source port; each reply sends the next. Records each reply's time and code."""

    def __init__(self, port: int, *, cards: dict[str, str], window: int = 8, timeout: float = 1.0):
        self.port = port
        self.net = _Sockets(window)
        self.cards = list(cards.items())
        self.secret = SECRET.encode()
        self.timeout = timeout
        self.ident = [0] * window
        self.out: list[tuple[int, float] | None] = [None] * window  # per socket: (ident, sent)
        self.replies: list[tuple[float, int, float]] = []           # (recv time, code, latency)
        self.timeouts: list[float] = []
        self.n = 0

    def _send(self, s: int) -> None:
        from radcore import dictionary as d
        from radcore import packet
        number, pin = self.cards[self.n % len(self.cards)]
        self.n += 1
        ident = self.ident[s]
        self.ident[s] = (ident + 1) & 0xFF
        data = packet.encode_access_request(ident, os.urandom(16), [(d.USER_NAME, number.encode())],
                                            self.secret, password=pin.encode())
        self.net.socks[s].sendto(data, ("127.0.0.1", self.port))
        self.out[s] = (ident, mono())

    def run(self, until: Callable[[float], bool]) -> None:
        for s, slot in enumerate(self.out):
            if slot is None:
                self._send(s)
        while True:
            now = mono()
            if until(now):
                return
            for s, data, t in self.net.receive(0.01):
                slot = self.out[s]
                if slot is None or len(data) < 20 or data[1] != slot[0]:
                    continue
                self.replies.append((t, data[0], t - slot[1]))
                self._send(s)
            now = mono()
            for s, slot in enumerate(self.out):
                if slot is not None and now - slot[1] > self.timeout:
                    self.timeouts.append(slot[1])
                    self._send(s)

    def close(self) -> None:
        self.net.close()

    def window(self, start: float, end: float) -> dict[str, Any]:
        got = [(code, lat) for t, code, lat in self.replies if start <= t < end]
        seconds = end - start
        out = {"seconds": round(seconds, 2), "replies": len(got),
               "per_s": round(len(got) / seconds, 1) if seconds > 0 else None,
               "accepts": sum(1 for code, _ in got if code == 2),
               "timeouts": sum(1 for t in self.timeouts if start <= t < end)}
        out.update({f"latency_{k}": v for k, v in dist_ms([lat for _, lat in got]).items()
                    if k in ("p50_ms", "p99_ms", "max_ms")})
        return out


def _overlap_split(samples: list[tuple[float, float, float]], log: list[list[float]], start: float,
                   end: float) -> dict[str, Any]:
    """Split the during-generation accounting samples by whether the request was in flight while the
    generator held the writer lock (lock acquired .. commit returned) - the direct evidence."""
    holds = sorted((t1, t3) for _, t1, _, t3 in log)
    starts = [h[0] for h in holds]
    hit, miss = [], []
    for _, sent, lat in samples:
        if not start <= sent < end:
            continue
        i = bisect.bisect_right(starts, sent + lat) - 1   # last hold starting before the reply
        overlapped = i >= 0 and holds[i][1] > sent
        (hit if overlapped else miss).append(lat)
    return {"overlapping_hold": dist_ms(hit), "not_overlapping": dist_ms(miss)}


def latency_run(workdir: Path, *, mode: str, cards: int, chunk_size: int, variant: str,
                pause_factor: float = 0.0, pin_run: int = 0, nice: int = 0, code: str = "current",
                head_path: str | None = None, rate: float,
                idle_seconds: float, workers: int, after_seconds: float = 5.0, say: Callable[[str], None] = print,
                keep_raw: bool = False) -> dict[str, Any]:
    """One server lifetime: provision, start, warm up 1 s, measure idle, then measure during one
    generation of `cards` cards in a child process, then idle again for `after_seconds` (a check on
    how much the machine's background load drifted). `variant`: "same" (the server's data dir, sync on),
    "nosync" (same dir, generator with sync off), "other" (a different data dir: no shared lock)."""
    load_before = list(os.getloadavg())
    run_dir = Path(tempfile.mkdtemp(prefix=f"lat-{mode}-", dir=workdir))
    data = run_dir / "var"
    try:
        pins = provision_base(str(data), sync=False)
        config = write_server_config(run_dir, data, workers=workers)
        gen_path = data if variant != "other" else run_dir / "other"
        if variant == "other":
            provision_base(str(gen_path), cards=0, sync=False)
        spec = {"task": "generate", "path": str(gen_path), "series": GEN_SERIES, "cards": cards,
                "chunk_size": chunk_size, "sync": variant != "nosync", "keep_txn_log": True,
                "pause_factor": pause_factor, "pin_run": pin_run, "nice": nice, "code": code,
                "head_path": head_path,
                "store_stats": False}
        with Server(config) as server:
            if mode == "acct":
                load: AcctLoad | AuthLoad = AcctLoad(server.ready["acct_port"], rate=rate, cards=list(pins))
            else:
                load = AuthLoad(server.ready["auth_port"], cards=pins)
            child: Child | None = None
            try:
                t_start = mono()
                idle_from, idle_to = t_start + 1.0, t_start + 1.0 + idle_seconds
                load.run(lambda now: now >= idle_to)
                child = Child(spec, run_dir)
                load.run(lambda now: child.poll())
                t_after = mono()
                after_from, after_to = t_after + 0.5, t_after + 0.5 + after_seconds
                load.run(lambda now: now >= after_to)
                if isinstance(load, AcctLoad):
                    load.drain()
                gen = child.result()
            finally:
                if child is not None:
                    child.kill()
                load.close()
            server_log_tail = server.log()[-2000:]
        log = gen.pop("txn_log")
        # The window runs from the first chunk's transaction (log[0] only creates the series record)
        # to the last commit.
        g0, g1 = log[min(1, len(log) - 1)][0], log[-1][3]
        result: dict[str, Any] = {"mode": mode, "variant": variant, "chunk_size": gen["chunk_size"],
                                  "pause_factor": pause_factor, "pin_run": pin_run, "nice": nice, "code": code,
                                  "cards": cards, "workers": workers,
                                  "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
                                  "generation": gen}
        if isinstance(load, AcctLoad):
            idle, during = load.window(idle_from, idle_to), load.window(g0, g1)
            result.update({"rate": rate, "idle": idle, "during": during, "bad_replies": load.bad,
                           "idle_after": load.window(after_from, after_to),
                           "overlap": _overlap_split(load.samples, log, g0, g1)})
            ratio = (during["p99_ms"] / idle["p99_ms"]) if during["p99_ms"] and idle["p99_ms"] else None
            result["p99_ratio"] = round(ratio, 2) if ratio else None
            result["meets_target"] = ratio is not None and ratio <= TARGET_RATIO
            say(f"  acct {gen_label(result)} chunk {gen['chunk_size']}: idle p50/p99/max {idle['p50_ms']}/"
                f"{idle['p99_ms']}/{idle['max_ms']} ms, during {during['p50_ms']}/{during['p99_ms']}/"
                f"{during['max_ms']} ms (n={during['count']}, lost {during['lost']}), after p99 "
                f"{result['idle_after']['p99_ms']} ms, ratio {result['p99_ratio']}; gen {gen['wall_s']} s, "
                f"hold p50/p99/max {gen['txn']['hold']['p50_ms']}/{gen['txn']['hold']['p99_ms']}/"
                f"{gen['txn']['hold']['max_ms']} ms, held {gen['txn']['held_fraction']}, "
                f"{gen['written_bytes_per_card']} B written/card")
            if keep_raw:
                result["raw"] = {"t0": load.t0, "gen_window": [g0, g1],
                                 "samples": [(round(s - load.t0, 4), round(lat * 1000, 3))
                                             for _, s, lat in load.samples],
                                 "holds": [(round(t1 - load.t0, 4), round((t3 - t1) * 1000, 3))
                                           for _, t1, _, t3 in log]}
        else:
            idle, during = load.window(idle_from, idle_to), load.window(g0, g1)
            result.update({"window": 8, "idle": idle, "during": during,
                           "idle_after": load.window(after_from, after_to),
                           "throughput_ratio": round(during["per_s"] / idle["per_s"], 2)
                           if idle["per_s"] and during["per_s"] is not None else None})
            say(f"  auth {gen_label(result)} chunk {gen['chunk_size']}: idle {idle['per_s']}/s "
                f"(p99 {idle['latency_p99_ms']} ms), "
                f"during {during['per_s']}/s (p99 {during['latency_p99_ms']} ms), accepts "
                f"{idle['accepts']}+{during['accepts']}; gen {gen['wall_s']} s")
        if "Traceback" in server_log_tail:
            result["server_log_tail"] = server_log_tail
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
