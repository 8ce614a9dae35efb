"""A RADIUS load generator for prepaid calling-card traffic, built so that the server is the bottleneck.

    python -m bench.loadgen --mode card-auth|number-auth|acct|call|mixed --rate N|max \\
        --window W [--sockets S] [--procs P] --duration S --secret X \\
        --auth HOST:PORT --acct HOST:PORT --cards FILE [--json OUT]

Modes (each is a *flow* of requests sent one after the other on one card; a new flow on the next
card starts as soon as one ends):

- `card-auth`: Access-Request with User-Name = card number, User-Password = PIN,
  Message-Authenticator, NAS-IP-Address, Calling-Station-Id. Stage 1 of the prepaid flow.
- `number-auth`: the same plus Called-Station-Id and a Cisco h323-conf-id (stage 2: rate + reserve).
  Conf-ids look random from their first word on, as a gateway's do, so calls are filed all over
  the server's session keys rather than in one sequential run per socket.
- `acct`: Accounting-Request Start, then Stop (with Acct-Session-Time) for the same call.
- `call`: a whole call: card-auth, number-auth, Start, Stop (the next step only after an Accept).
- `mixed`: of every four flows three are whole calls and one is a balance check (card-auth only).

Load shape: `--sockets` UDP sockets per process (several, so SO_REUSEPORT spreads them over a
server's workers), each with `--window` requests in flight; `--procs` processes (one per core you
give it with `--cpus`). `--rate max` is a closed loop: a new request leaves as soon as an answer
frees a slot. `--rate N` is N requests/s in total, still capped by the window. Latency is measured
from the moment `sendmmsg` returns to the moment `recvmmsg` returns the reply.

Reports answered requests/s, latency p50/p99/p99.9, and counts of rejects, timeouts (no answer
within `--timeout`; nothing is retransmitted), bad replies (wrong Response Authenticator or
Message-Authenticator, malformed, unexpected code) and late replies, as a table and as JSON.

The cards file has one card per line: `CARD-NUMBER PIN` (`bench.provision` writes it).
The engine is the Cython extension `bench._loadgen`; build it with `pip install -e .` or
`cythonize -i -3 bench/_loadgen.pyx`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import time
from array import array
from collections.abc import Sequence

try:
    from bench import _loadgen
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(f"bench._loadgen is not built ({exc}): run `pip install -e .` or "
                      "`cythonize -i -3 bench/_loadgen.pyx`") from exc

MODES = _loadgen.MODES
OPS = _loadgen.OPS
SOCKET_BUFFER = 4 << 20
Card = tuple[bytes, bytes]


def load_cards(path: str, limit: int | None = None) -> list[Card]:
    """(card number, PIN) pairs from a `NUMBER PIN` per line file, at most `limit` of them."""
    cards: list[Card] = []
    with open(path, "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 2 or fields[0].startswith(b"#"):
                continue
            cards.append((fields[0], fields[1]))
            if limit is not None and len(cards) >= limit:
                break
    if not cards:
        raise ValueError(f"{path}: no cards")
    return cards


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return socket.gethostbyname(host), int(port)


def _sockets(count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.bind(("0.0.0.0", 0))
        sock.setblocking(False)
        out.append(sock)
    return out


def _run_one(proc: int, nprocs: int, params: dict, cards: Sequence[Card], start_at: int,
             cpu: int | None) -> dict:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    socks = _sockets(params["sockets"])
    try:
        engine = _loadgen.Engine(
            fds=[s.fileno() for s in socks], auth=params["auth"], acct=params["acct"],
            secret=params["secret"], cards=cards, mode=params["mode"], window=params["window"],
            rate=params["rate"] / nprocs if params["rate"] else 0.0, duration=params["duration"],
            warmup=params["warmup"], timeout=params["timeout"], proc=proc, nprocs=nprocs,
            start_at=start_at)
        cpu = time.process_time()
        result = engine.run()
        if result is None:
            raise KeyboardInterrupt
        result["cpu"] = time.process_time() - cpu
        return result
    finally:
        for s in socks:
            s.close()


def _child(conn, *args) -> None:
    try:
        conn.send(("ok", _run_one(*args)))
    except BaseException as exc:  # noqa: BLE001 (report anything, never leave the parent waiting)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_load(*, auth: tuple[str, int], acct: tuple[str, int], secret: bytes, cards: Sequence[Card],
             mode: str, window: int, sockets: int = 4, procs: int = 1, rate: float = 0.0,
             duration: float = 5.0, warmup: float = 0.5, timeout: float = 1.0,
             cpus: Sequence[int] | None = None) -> dict:
    """Run one load and return its summary (see `summarize`). `rate` 0 means as fast as possible.

    With one process and no `cpus` the engine runs in this process; otherwise each process is a
    forked child pinned to `cpus[i % len(cpus)]`, all starting at the same instant.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    params = {"auth": auth, "acct": acct, "secret": secret, "mode": mode, "window": window,
              "sockets": sockets, "rate": rate, "duration": duration, "warmup": warmup,
              "timeout": timeout}
    if procs == 1 and not cpus:
        raws = [_run_one(0, 1, params, cards, 0, None)]
    else:
        ctx = multiprocessing.get_context("fork")
        start_at = time.monotonic_ns() + 300_000_000
        children = []
        for i in range(procs):
            parent_end, child_end = ctx.Pipe(duplex=False)
            cpu = cpus[i % len(cpus)] if cpus else None
            p = ctx.Process(target=_child, args=(child_end, i, procs, params, cards, start_at, cpu))
            p.start()
            child_end.close()
            children.append((p, parent_end))
        raws = []
        errors = []
        for p, conn in children:
            try:
                status, value = conn.recv()
            except EOFError:
                status, value = "error", f"load process {p.pid} died"
            p.join()
            (raws if status == "ok" else errors).append(value)
        if errors:
            raise RuntimeError("; ".join(errors))
    summary = summarize(raws)
    summary.update({"mode": mode, "window": window, "sockets": sockets, "procs": procs,
                    "in_flight": window * sockets * procs, "rate_target": rate or "max",
                    "duration": duration, "warmup": warmup, "timeout": timeout,
                    "cards": len(cards)})
    return summary


# ---------------------------------------------------------------------------------------------
# Results


def _percentiles(counts: Sequence[int], qs=(0.5, 0.99, 0.999)) -> dict:
    total = sum(counts)
    out = {"count": total}
    names = {0.5: "p50", 0.99: "p99", 0.999: "p99.9"}
    if not total:
        out.update({names[q]: None for q in qs})
        out.update({"mean": None, "max": None})
        return out
    cum = 0
    targets = sorted(qs)
    ti = 0
    weighted = 0.0
    top = 0
    for idx, c in enumerate(counts):
        if not c:
            continue
        value = _loadgen.hist_value(idx) / 1000.0
        weighted += value * c
        top = value
        cum += c
        while ti < len(targets) and cum >= targets[ti] * total:
            out[names[targets[ti]]] = round(value, 1)
            ti += 1
    out["mean"] = round(weighted / total, 1)
    out["max"] = round(top, 1)
    return out


def summarize(raws: Sequence[dict]) -> dict:
    """Merge the per-process results: counters add up, histograms add bucket by bucket."""
    buckets = _loadgen.HIST_BUCKETS
    hist = array("Q", bytes(8 * buckets * (len(OPS) + 2)))
    for raw in raws:
        h = array("Q", raw["hist"])
        for i, v in enumerate(h):
            if v:
                hist[i] += v
    elapsed = max(r["elapsed"] for r in raws)
    ops = {}
    totals = {"sent": 0, "ok": 0, "rejects": 0, "timeouts": 0, "bad": 0}
    for i, op in enumerate(OPS):
        counts = {k: sum(r["ops"][op][k] for r in raws) for k in totals}
        if not counts["sent"]:
            continue
        for k in totals:
            totals[k] += counts[k]
        counts["latency_us"] = _percentiles(hist[i * buckets:(i + 1) * buckets])
        counts["per_s"] = round((counts["ok"] + counts["rejects"]) / elapsed, 1)
        ops[op] = counts
    answered = totals["ok"] + totals["rejects"]
    flows = sum(r["flows_done"] for r in raws)
    cpu = sum(r.get("cpu", 0.0) for r in raws)
    return {
        "elapsed": round(elapsed, 3),
        # CPU the load processes used (warm-up and drain included), in cores: evidence that the
        # generator was not the bottleneck when it stays well below the number of load CPUs.
        "loadgen_cores": round(cpu / elapsed, 2),
        "requests_per_s": round(answered / elapsed, 1),
        "ok_per_s": round(totals["ok"] / elapsed, 1),
        "flows_per_s": round(flows / elapsed, 1),
        "latency_us": _percentiles(hist[len(OPS) * buckets:(len(OPS) + 1) * buckets]),
        "flow_latency_us": _percentiles(hist[(len(OPS) + 1) * buckets:]),
        "counts": {**totals, "answered": answered, "late": sum(r["late"] for r in raws),
                   "no_credit": sum(r["no_credit"] for r in raws),
                   "flows_done": flows, "flows_failed": sum(r["flows_failed"] for r in raws),
                   "send_blocked": sum(r["send_blocked"] for r in raws),
                   "send_errors": sum(r["send_errors"] for r in raws),
                   "rate_shortfall": sum(r["tokens_dropped"] for r in raws)},
        "ops": ops,
    }


TABLE_COLUMNS = ("mode", "in flight", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "ok", "rejects",
                 "timeouts", "bad")


def _us(v) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def table_row(s: dict) -> list[str]:
    lat = s["latency_us"]
    c = s["counts"]
    return [s["mode"], str(s["in_flight"]), f"{s['requests_per_s']:,.0f}", _us(lat["p50"]), _us(lat["p99"]),
            _us(lat["p99.9"]), str(c["ok"]), str(c["rejects"]), str(c["timeouts"]), str(c["bad"])]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def format_summary(s: dict) -> str:
    out = [markdown_table(TABLE_COLUMNS, [table_row(s)])]
    if len(s["ops"]) > 1:
        rows = [[op, f"{o['per_s']:,.0f}", _us(o["latency_us"]["p50"]), _us(o["latency_us"]["p99"]),
                 str(o["ok"]), str(o["rejects"]), str(o["timeouts"]), str(o["bad"])]
                for op, o in s["ops"].items()]
        out.append(markdown_table(("request", "per s", "p50 µs", "p99 µs", "ok", "rejects", "timeouts",
                                   "bad"), rows))
        fl = s["flow_latency_us"]
        out.append(f"flows: {s['flows_per_s']:,.0f}/s completed, p50 {_us(fl['p50'])} µs, "
                   f"p99 {_us(fl['p99'])} µs, {s['counts']['flows_failed']} failed")
    out.append(f"load generator: {s['loadgen_cores']} cores busy")
    c = s["counts"]
    extra = {k: c[k] for k in ("late", "no_credit", "send_blocked", "send_errors", "rate_shortfall") if c[k]}
    if extra:
        out.append("also: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--rate", default="max", help="requests/s in total, or max (default)")
    parser.add_argument("--window", type=int, default=16, help="requests in flight per socket (1..255)")
    parser.add_argument("--sockets", type=int, default=4, help="UDP sockets per process")
    parser.add_argument("--procs", type=int, default=1, help="load processes")
    parser.add_argument("--cpus", help="pin load processes to these CPUs, e.g. 1 or 2,3")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds run before measuring")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds before a request counts as lost")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--auth", type=parse_address, default=("127.0.0.1", 1812))
    parser.add_argument("--acct", type=parse_address, default=("127.0.0.1", 1813))
    parser.add_argument("--cards", required=True, help="file of `CARD-NUMBER PIN` lines")
    parser.add_argument("--limit-cards", type=int, help="use only the first N cards")
    parser.add_argument("--json", help="write the summary here as JSON")
    args = parser.parse_args(argv)
    rate = 0.0 if args.rate == "max" else float(args.rate)
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    summary = run_load(auth=args.auth, acct=args.acct, secret=args.secret.encode(),
                       cards=load_cards(args.cards, args.limit_cards), mode=args.mode,
                       window=args.window, sockets=args.sockets, procs=args.procs, rate=rate,
                       duration=args.duration, warmup=args.warmup, timeout=args.timeout, cpus=cpus)
    print(format_summary(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
