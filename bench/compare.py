"""radcore, FreeRADIUS 3.2 and a pyrad server side by side: same cards, same load generator, same cores.

    python -m bench.compare                  # or: bench/compare   (defaults finish in ~5 min on 2 cores)
    python -m bench.compare --cards 20000 --modes card-auth,acct --windows 1,64 --duration 2
    python -m bench.compare --profile        # also py-spy radcore's worker and break its time down
    python -m bench.compare --servers radcore,radcore-shm,freeradius --rounds 3 --windows 1,16,64,256
    python -m bench.compare --render bench/results/compare.json   # redraw tables and plot only

What it does, in order:

1. Provisions N cards (default 100,000) once under `--work` (reused while N matches, see
   `bench.provision`): a radcore LMDB store, the card/PIN list, a FreeRADIUS users file.
2. Starts every server on its own fresh copy of the data, pinned with taskset to `--server-cpus`:
   `radcore` (1 worker), `radcore-2w` (2 workers, pinned to server *and* load CPUs, to show scaling),
   `freeradius` (`files` + `pap` for auth, `detail` for accounting, a fixed pool of `--fr-threads`
   threads, see `bench.freeradius`) and `pyrad` (`bench.pyrad_server`).
3. For every mode and every window (total requests in flight), runs the load generator, pinned to
   `--load-cpus` (one process per load CPU), against each server in turn. The order of servers rotates
   from one cell to the next, and `--rounds` repeats the whole matrix, so drift on a noisy machine
   hits every server alike; the median of the rounds is reported.
   A window W is spread over min(W, 8) sockets (so SO_REUSEPORT spreads it over a server's workers).
4. Writes `compare.json` (every run, all counters), `compare.md` (tables, ratios, the targets) and
   `compare.png` (throughput and p99 against window, one line per server, one column per mode) to
   `--out` (default bench/results). With `--profile`, also `profile.md`/`profile.json`.

On a 2-core machine the server gets CPU 0 and the load generator CPU 1; `radcore-2w` then shares CPU 1
with the load generator, so its numbers understate what two dedicated cores would do (the report says
so). The durable comparison is `radcore` (1 worker) against `freeradius` on the same single core.
`radcore-shm` (store on tmpfs: fdatasync returns at once, so not durable) is a diagnostic that
separates radcore's CPU cost from the disk's flush latency; add it with `--servers`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench import loadgen
from bench.machine import (
    code_state,
    cpu_model,
    cpu_times,
    fsync_probe,
    loadavg,
    steal_percent,
)
from bench.provision import provision
from bench.servers import SECRET, FreeRadiusServer, PyradServer, RadcoreServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVERS = ("radcore", "radcore-2w", "freeradius", "pyrad")
#: Optional diagnostic variants (not in the default set): radcore with its store on tmpfs, where
#: fdatasync returns at once, to separate the engine's CPU cost from the disk's flush latency.
EXTRA_SERVERS = ("radcore-shm", "radcore-shm-2w")
SHM = "/dev/shm"
MODES = loadgen.MODES


def shape(window: int, procs: int, max_sockets: int = 8) -> tuple[int, int, int]:
    """(processes, sockets per process, requests in flight per socket) for `window` in flight in total."""
    procs = max(1, min(procs, window))
    per_proc = max(1, window // procs)
    sockets = max(1, min(max_sockets, per_proc))
    return procs, sockets, max(1, min(255, per_proc // sockets))


def run_cell(server, cards, mode: str, window: int, args) -> dict:
    procs, sockets, per_socket = shape(window, len(args.load_cpus))
    before, cpu_before = server.counters(), cpu_times()
    summary = loadgen.run_load(auth=server.auth, acct=server.acct, secret=SECRET.encode(), cards=cards,
                               mode=mode, window=per_socket, sockets=sockets, procs=procs,
                               duration=args.duration, warmup=args.warmup, timeout=args.timeout,
                               cpus=args.load_cpus)
    after = server.counters()
    summary["steal_pct"] = steal_percent(cpu_before, cpu_times())
    if before and after and after["batches"] > before["batches"]:
        summary["server_batch_avg"] = round((after["replies"] - before["replies"])
                                            / (after["batches"] - before["batches"]), 1)
    summary["server"] = server.label
    summary["window"] = window
    summary["socket_window"] = per_socket
    return summary


def compact(run: dict) -> dict:
    """One run in a line of JSON: what the tables need, for every round (the medians keep the rest)."""
    lat, c = run["latency_us"], run["counts"]
    return {"server": run["server"], "mode": run["mode"], "window": run["window"], "round": run["round"],
            "in_flight": run["in_flight"], "requests_per_s": run["requests_per_s"], "p50": lat["p50"],
            "p99": lat["p99"], "p99.9": lat["p99.9"], "rejects": c["rejects"], "timeouts": c["timeouts"],
            "bad": c["bad"], "batch_avg": run.get("server_batch_avg"), "loadgen_cores": run["loadgen_cores"],
            "steal_pct": run.get("steal_pct")}


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (a real run, so its latencies belong to its throughput).

    With an even number of rounds the upper of the two middle runs: on a shared machine noise only
    ever slows a run down.
    """
    ordered = sorted(runs, key=lambda r: r["requests_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds"] = [r["requests_per_s"] for r in runs]
    return chosen


def run_matrix(servers: dict, cards, args, log) -> list[dict]:
    runs = []
    cell = 0
    names = list(servers)
    total = args.rounds * len(args.modes) * len(args.windows) * len(names)
    done = 0
    for rnd in range(args.rounds):
        for mode in args.modes:
            for window in args.windows:
                order = names[cell % len(names):] + names[:cell % len(names)]
                cell += 1
                for name in order:
                    result = run_cell(servers[name], cards, mode, window, args)
                    result["round"] = rnd
                    runs.append(result)
                    done += 1
                    lat = result["latency_us"]
                    log(f"[{done}/{total}] {name:>10} {mode:>11} in flight {result['in_flight']:>4}: "
                        f"{result['requests_per_s']:>9,.0f} req/s  p50 {loadgen._us(lat['p50']):>7} µs  "
                        f"p99 {loadgen._us(lat['p99']):>7} µs  rejects {result['counts']['rejects']} "
                        f"timeouts {result['counts']['timeouts']} bad {result['counts']['bad']}  "
                        f"loadgen {result['loadgen_cores']} cores")
                    time.sleep(0.2)
    return runs


def half_peak_latency(server, cards, by_window: dict, args, log) -> dict:
    """Card auth at a fixed rate of half radcore's measured peak: the latency a NAS sees with headroom.

    The peak is the median-of-rounds best window; the fixed-rate run uses the largest window so the
    generator never waits for replies to keep the rate. One run per round, the median reported.
    """
    top = peak(by_window)
    rate = top["requests_per_s"] / 2
    window = max(args.windows)
    procs, sockets, per_socket = shape(window, len(args.load_cpus))
    runs = []
    for _ in range(args.rounds):
        cpu_before = cpu_times()
        runs.append(loadgen.run_load(auth=server.auth, acct=server.acct, secret=SECRET.encode(), cards=cards,
                                     mode="card-auth", window=per_socket, sockets=sockets, procs=procs,
                                     rate=rate, duration=args.duration, warmup=args.warmup,
                                     timeout=args.timeout, cpus=args.load_cpus))
        runs[-1]["steal_pct"] = steal_percent(cpu_before, cpu_times())
    run = sorted(runs, key=lambda r: r["latency_us"]["p99"])[len(runs) // 2]
    lat = run["latency_us"]
    log(f"radcore card-auth at half its peak ({rate:,.0f} req/s): {run['requests_per_s']:,.0f} req/s answered, "
        f"p50 {loadgen._us(lat['p50'])} µs, p99 {loadgen._us(lat['p99'])} µs")
    return {"rate": round(rate), "requests_per_s": run["requests_per_s"], "p50": lat["p50"], "p99": lat["p99"],
            "p99.9": lat["p99.9"], "timeouts": run["counts"]["timeouts"], "steal_pct": run.get("steal_pct"),
            "rounds_p99": [r["latency_us"]["p99"] for r in runs],
            "rounds_steal_pct": [r.get("steal_pct") for r in runs]}


def aggregate(runs: list[dict]) -> dict:
    """{server: {mode: {window: median run}}}."""
    cells: dict = {}
    for r in runs:
        cells.setdefault(r["server"], {}).setdefault(r["mode"], {}).setdefault(r["window"], []).append(r)
    return {s: {m: {w: median_run(rs) for w, rs in sorted(ws.items())} for m, ws in modes.items()}
            for s, modes in cells.items()}


def peak(by_window: dict) -> dict:
    return max(by_window.values(), key=lambda r: r["requests_per_s"])


# ---------------------------------------------------------------------------------------------
# Reports


TARGETS = (  # (mode, what, needed ratio radcore/freeradius, kind)
    ("card-auth", "card auth req/s (PAP + Message-Authenticator + LMDB card + credit) vs FreeRADIUS files", 3.0, "rate"),
    ("acct", "accounting Start/Stop req/s (durable debits) vs FreeRADIUS detail", 5.0, "rate"),
    ("call", "full call req/s (auth, authorize, Start, Stop) vs FreeRADIUS", 3.0, "rate"),
    ("card-auth", "p50 latency at 1 request in flight, card auth: radcore <= FreeRADIUS", 1.0, "p50"),
)


def ratios(agg: dict, base: str = "freeradius", subject: str = "radcore") -> dict:
    out = {}
    if base not in agg or subject not in agg:
        return out
    for mode in agg[subject]:
        if mode not in agg[base]:
            continue
        a, b = peak(agg[subject][mode]), peak(agg[base][mode])
        entry = {"peak_ratio": round(a["requests_per_s"] / b["requests_per_s"], 2) if b["requests_per_s"] else None,
                 "subject_peak": a["requests_per_s"], "base_peak": b["requests_per_s"]}
        one_a, one_b = agg[subject][mode].get(1), agg[base][mode].get(1)
        if one_a and one_b and one_a["latency_us"]["p50"] and one_b["latency_us"]["p50"]:
            entry["p50_at_1"] = (one_a["latency_us"]["p50"], one_b["latency_us"]["p50"])
            entry["p50_ratio"] = round(one_a["latency_us"]["p50"] / one_b["latency_us"]["p50"], 2)
        out[mode] = entry
    return out


def markdown(agg: dict, runs: list[dict], meta: dict) -> str:
    us = loadgen._us
    out = ["# radcore vs FreeRADIUS vs pyrad", "",
           "<!-- GENERATED by bench/compare.py; rerun it rather than editing. -->", "",
           (f"Run {meta['date']} on {meta['machine']}, {meta['cpus']} CPUs. "
            f"{meta['cards']:,} cards, {meta['duration']} s measured per run after {meta['warmup']} s warm-up, "
            f"{meta['rounds']} round(s) (median shown), windows {', '.join(map(str, meta['windows']))} "
            f"requests in flight, timeout {meta['timeout']} s."), "",
           (f"Load average (1/5/15 min) at start {meta['loadavg_start']}, at end {meta.get('loadavg_end', '?')}: "
            "other work on the machine shows up here and in the spread between rounds."), "",
           (f"Disk: fdatasync of 4 KiB on the work directory p50 {meta['fdatasync_us']['p50']} µs, "
            f"p90 {meta['fdatasync_us']['p90']} µs, p99 {meta['fdatasync_us']['p99']} µs "
            "(a durable LMDB commit waits for two)."), "",
           (f"Code: commit {meta['code']['commit'] or '?'}"
            + (f" with uncommitted changes to {', '.join(c.split()[-1] for c in meta['code']['changed'])}"
               if meta["code"]["changed"] else "")
            + f"; radcore sources sha256 {meta['code']['radcore_sha256']}."), "",
           f"Pinning: servers on CPU {meta['server_cpus']}, load generator on CPU "
           f"{','.join(map(str, meta['load_cpus']))}"
           + (f"; the 2-worker radcore variants run on CPUs {meta['all_cpus']} and share the load "
              "generator's CPU." if any(s.endswith("2w") for s in agg) else "."), ""]
    for note in meta.get("notes", []):
        out.append(f"- {note}")
    out.append("")

    subjects = [name for name in ("radcore", "radcore-2w", "radcore-shm", "radcore-shm-2w") if name in agg]
    r = ratios(agg)
    if r:
        def cell(rr: dict, mode: str, kind: str) -> str:
            e = rr.get(mode)
            if not e:
                return "-"
            if kind == "rate":
                return f"{e['peak_ratio']}x ({e['subject_peak']:,.0f} vs {e['base_peak']:,.0f} req/s)"
            if e.get("p50_at_1"):
                return f"{e['p50_ratio']}x ({e['p50_at_1'][0]:,.0f} vs {e['p50_at_1'][1]:,.0f} µs)"
            return "-"

        every = {name: ratios(agg, subject=name) for name in subjects}
        rows = []
        for mode, what, need, kind in TARGETS:
            if mode not in r:
                continue
            e = r[mode]
            met = ((e["peak_ratio"] or 0) >= need if kind == "rate"
                   else e.get("p50_ratio") is not None and e["p50_ratio"] <= need)
            rows.append([what, f">= {need:g}x" if kind == "rate" else f"<= {need:g}x",
                         *(cell(every[name], mode, kind) for name in subjects), "yes" if met else "no"])
        out += ["## Targets", "",
                ("Ratios radcore / FreeRADIUS. `met` judges `radcore` (1 worker, durable store, the same single "
                 "core as FreeRADIUS). Other columns: 2 workers (sharing the load generator's core on a 2-CPU "
                 "machine) and, when run, the tmpfs-store diagnostics (no flush latency; not durable)."), "",
                loadgen.markdown_table(("target", "needed", *subjects, "met"), rows), ""]
    half = meta.get("half_peak")
    if half:
        out += [(f"Card auth at a fixed {half['rate']:,} req/s, half of radcore's peak (target: p99 under 1 ms): "
                 f"{half['requests_per_s']:,.0f} req/s answered, p50 {us(half['p50'])} µs, p99 {us(half['p99'])} µs, "
                 f"p99.9 {us(half['p99.9'])} µs, {half['timeouts']} timeouts (median of the rounds by p99): "
                 f"**{'met' if half['p99'] < 1000 else 'not met'}**. CPU steal during that run: "
                 f"{_pct(half.get('steal_pct'))}; p99 per round: "
                 f"{', '.join(us(p) + ' µs' for p in half.get('rounds_p99', []))}."), ""]

    out += ["## Peak throughput per mode", "",
            "Best median req/s over the windows, its latency, and p50 at one request in flight.", ""]
    rows = []
    for mode in meta["modes"]:
        for server in meta["servers"]:
            if mode not in agg.get(server, {}):
                continue
            p = peak(agg[server][mode])
            one = agg[server][mode].get(1)
            base = agg.get("freeradius", {}).get(mode)
            ratio = f"{p['requests_per_s'] / peak(base)['requests_per_s']:.2f}x" if base else "-"
            rows.append([mode, server, f"{p['requests_per_s']:,.0f}", ratio, str(p["in_flight"]),
                         us(p["latency_us"]["p50"]), us(p["latency_us"]["p99"]),
                         us(one["latency_us"]["p50"]) if one else "-", us(one["latency_us"]["p99"]) if one else "-"])
    out += [loadgen.markdown_table(("mode", "server", "peak req/s", "vs FreeRADIUS", "at in flight",
                                    "p50 µs", "p99 µs", "p50 µs @1", "p99 µs @1"), rows), ""]

    pairs = [(a, b) for a, b in (("radcore", "radcore-2w"), ("radcore-shm", "radcore-shm-2w"))
             if a in agg and b in agg]
    if pairs:
        out += ["## radcore scaling: 1 worker vs 2 workers", ""]
        rows = []
        for one, two in pairs:
            for mode in meta["modes"]:
                if mode in agg[one] and mode in agg[two]:
                    a, b = peak(agg[one][mode]), peak(agg[two][mode])
                    rows.append([one, mode, f"{a['requests_per_s']:,.0f}", f"{b['requests_per_s']:,.0f}",
                                 f"{b['requests_per_s'] / a['requests_per_s']:.2f}x" if a["requests_per_s"] else "-"])
        out += [loadgen.markdown_table(("store", "mode", "1 worker req/s", "2 workers req/s", "scaling"), rows), ""]

    out += ["## Every cell (median of rounds)", ""]
    rows = []
    for mode in meta["modes"]:
        for server in meta["servers"]:
            for run in agg.get(server, {}).get(mode, {}).values():
                c, lat = run["counts"], run["latency_us"]
                rows.append([mode, server, str(run["in_flight"]), f"{run['requests_per_s']:,.0f}",
                             us(lat["p50"]), us(lat["p99"]), us(lat["p99.9"]), str(c["rejects"]),
                             str(c["timeouts"]), str(c["bad"]), str(run.get("server_batch_avg", "-")),
                             str(run["loadgen_cores"]), _pct(run.get("steal_pct"))])
    out += [loadgen.markdown_table(("mode", "server", "in flight", "req/s", "p50 µs", "p99 µs", "p99.9 µs",
                                    "rejects", "timeouts", "bad", "batch avg", "loadgen cores", "steal"),
                                   rows), ""]
    out += [("Columns: req/s counts answered requests (Accept, Reject, Accounting-Response) that passed "
             "Response Authenticator and Message-Authenticator checks; `bad` are replies that failed them or "
             "were malformed; `timeouts` got no answer within the timeout (nothing is retransmitted); "
             "`batch avg` is radcore's replies per batch from its /metrics; `loadgen cores` is the CPU the "
             "load generator used, to show it was not the bottleneck; `steal` is the share of the machine's "
             "CPU time the hypervisor gave to other guests during the run (/proc/stat): on a shared virtual "
             "machine, stalls that no server can avoid. Latency runs from just before a request's sendmmsg "
             "to its reply's kernel receive timestamp."), ""]
    return "\n".join(out)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def plot(agg: dict, meta: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    modes = [m for m in meta["modes"] if any(m in agg.get(s, {}) for s in agg)]
    fig, axes = plt.subplots(2, len(modes), figsize=(3.6 * len(modes), 6.5), squeeze=False)
    styles = {"radcore": ("tab:blue", "-"), "radcore-2w": ("tab:blue", "--"), "freeradius": ("tab:green", "-"),
              "pyrad": ("tab:red", "-"), "radcore-shm": ("tab:purple", ":"), "radcore-shm-2w": ("tab:purple", "-.")}
    windows = meta["windows"]
    for col, mode in enumerate(modes):
        for server in meta["servers"]:
            cells = agg.get(server, {}).get(mode)
            if not cells:
                continue
            color, line = styles.get(server, (None, "-"))
            xs = list(cells)
            axes[0][col].plot(xs, [cells[w]["requests_per_s"] for w in xs], marker="o", color=color,
                              linestyle=line, label=server)
            axes[1][col].plot(xs, [cells[w]["latency_us"]["p99"] or float("nan") for w in xs], marker="o",
                              color=color, linestyle=line, label=server)
        axes[0][col].set_title(mode)
        for row, label in ((0, "answered req/s"), (1, "p99 latency (µs)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_xticks(windows, [str(w) for w in windows])
            ax.set_xlabel("requests in flight")
            ax.grid(True, which="both", alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
        axes[0][col].set_ylim(bottom=0)
        axes[1][col].set_yscale("log")
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{meta['cards']:,} cards, {meta['duration']} s per run, servers on CPU {meta['server_cpus']}")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# Profile


PROFILE_RULES = (  # first match walking from the innermost frame outwards decides the category
    ("LMDB commit: fsync", ("fdatasync", "fsync (", "msync")),
    ("LMDB commit: page writes", ("pwrite", "writev", "mdb_page_flush", "mdb_env_write_meta")),
    ("waiting for the LMDB writer lock (another worker's batch)", ("mdb_txn_renew0", "mdb09_txn_begin")),
    ("LMDB get/put/cursor/txn bookkeeping", ("(cpython.c", "(mdb.c", "(midl.c", "mdb_", "trans_", "cursor_")),
    ("socket syscalls", ("recvfrom (", "sendto (", "recvmsg (", "sendmsg (", "recvmmsg", "sendmmsg", "sock_recv",
                         "sock_send", "sock_call")),
    ("idle (waiting in epoll)", ("epoll_wait", "select_epoll_poll", "EpollSelector")),
    ("codec (_fastpath, Cython)", ("_fastpath",)),
    ("card-auth lane (C: _cardauth)", ("_cardauth", "_sha256")),
    ("accounting lane (C: _acctlane)", ("_acctlane", "_reserve.pxi", "_sessions.pxi", "WriteLane_")),
    ("batch loop and duplicate cache (C: _lane, _dupcache)", ("_lane.pyx", "radcore/_lane", "_lane.cpython",
                                                              "_dupcache")),
    ("PIN check (HMAC-SHA256 in keys.py)", ("radcore/keys.py",)),
    ("server loop Python (server.py, dupcache, metrics)", ("radcore/server.py", "radcore/dupcache.py",
                                                            "radcore/metrics.py", "radcore/config.py")),
    ("handler Python (prepaid, settlement, records, replies, rating)",
     ("radcore/handler.py", "radcore/prepaid.py", "radcore/settlement.py", "radcore/replies.py",
      "radcore/records.py", "radcore/rating.py", "radcore/store.py", "radcore/clock.py")),
)


def categorize(folded: str) -> tuple[Counter, Counter]:
    """(samples per category, samples per innermost radcore/lmdb/libc frame) from py-spy raw output."""
    cats: Counter = Counter()
    leaves: Counter = Counter()
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        category = "other"
        for frame in reversed(frames):
            hit = next((name for name, keys in PROFILE_RULES if any(k in frame for k in keys)), None)
            if hit:
                category = hit
                leaves[frame] += n
                break
        cats[category] += n
    return cats, leaves


def run_profile(server: RadcoreServer, cards, args, log) -> dict:
    """py-spy the single worker of `server` while each mode runs at the largest window."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(pyspy):
        log("py-spy is not installed (pip install py-spy): no profile")
        return {}
    workers = server.worker_pids()
    if len(workers) != 1:
        log(f"profile needs exactly one radcore worker, found {workers}")
        return {}
    window = max(args.windows)
    results = {}
    for mode in args.profile_modes:
        holder: dict = {}
        seconds = args.profile_seconds
        load_args = argparse.Namespace(**{**vars(args), "duration": seconds + 1.0, "warmup": 0.5})
        def load(mode=mode, load_args=load_args, holder=holder):
            holder["run"] = run_cell(server, cards, mode, window, load_args)

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(1.0)
        with tempfile.NamedTemporaryFile("r", suffix=".txt") as out:
            proc = subprocess.run([pyspy, "record", "--native", "--idle", "-r", "200",
                                   "-d", str(int(seconds)), "-f", "raw", "-o", out.name, "-p", str(workers[0])],
                                  capture_output=True, text=True, check=False)
            folded = Path(out.name).read_text()
        thread.join()
        if proc.returncode != 0 or not folded:
            log(f"py-spy failed: {proc.stderr.strip()[-500:]}")
            continue
        cats, leaves = categorize(folded)
        total = sum(cats.values())
        run = holder["run"]
        per_req_us = 1e6 / run["requests_per_s"] if run["requests_per_s"] else 0.0
        results[mode] = {
            "requests_per_s": run["requests_per_s"], "in_flight": run["in_flight"],
            "server_batch_avg": run.get("server_batch_avg"), "samples": total,
            "wall_us_per_request": round(per_req_us, 1),
            "categories": {name: {"share": round(n / total, 4), "us_per_request": round(n / total * per_req_us, 1)}
                           for name, n in cats.most_common()},
            "top_frames": [[frame, round(n / total, 4)] for frame, n in leaves.most_common(25)],
        }
        if args.keep_profiles:
            keep = args.work / "profiles"
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"profile-{mode}.folded").write_text(folded)
            log(f"raw stacks: {keep / f'profile-{mode}.folded'}")
        log(f"profiled {mode}: {run['requests_per_s']:,.0f} req/s, {total} samples")
    return results


def profile_markdown(prof: dict) -> str:
    out = ["# Where radcore's worker spends its time", "",
           "<!-- GENERATED by bench/compare.py --profile; rerun it rather than editing. -->", "",
           ("py-spy `record --native --idle` at 200 Hz on the single worker of a 1-worker radcore "
            "while the load generator runs the mode at the largest window. Each sample is attributed to the "
            "innermost frame that belongs to a category (so a `malloc` inside `Card.unpack` counts as handler "
            "Python). µs/request = share x (1 s / requests per second): wall time, so `idle` is the part of a "
            "request's budget the worker spent waiting for packets."), ""]
    for mode, p in prof.items():
        out += [(f"## {mode}: {p['requests_per_s']:,.0f} req/s at {p['in_flight']} in flight, "
                 f"{p['wall_us_per_request']} µs of worker time per request, "
                 f"{p.get('server_batch_avg') or '?'} requests per batch"), ""]
        rows = [[name, f"{c['share'] * 100:.1f}%", f"{c['us_per_request']:.1f}"] for name, c in p["categories"].items()]
        out += [loadgen.markdown_table(("category", "share", "µs/request"), rows), "", "Innermost frames:", ""]
        rows = [[frame, f"{share * 100:.1f}%"] for frame, share in p["top_frames"][:15]]
        out += [loadgen.markdown_table(("frame", "share"), rows), ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Main


def _cpu_list(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def main(argv=None) -> int:
    ncpu = len(os.sched_getaffinity(0))
    cpus = sorted(os.sched_getaffinity(0))
    default_server = cpus[: max(1, ncpu // 2)] if ncpu > 1 else cpus
    default_load = cpus[max(1, ncpu // 2):] if ncpu > 1 else cpus
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--cards", type=int, default=100_000, help="cards provisioned in every server")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"subset of {','.join(SERVERS + EXTRA_SERVERS)} (the last two are diagnostics: "
                             "radcore with its store on tmpfs)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--windows", default="1,16,64", help="total requests in flight, comma separated")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds before a request counts as lost")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole matrix; medians are reported")
    parser.add_argument("--server-cpus", default=",".join(map(str, default_server)))
    parser.add_argument("--load-cpus", default=",".join(map(str, default_load)))
    parser.add_argument("--fr-threads", type=int, default=2, help="FreeRADIUS thread pool size")
    parser.add_argument("--batch-max", type=int, default=1024,
                        help="radcore's server.batch_max: datagrams per batch and durable commit")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "radcore-bench"),
                        help="provisioning cache and server directories")
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON, Markdown and PNG go")
    parser.add_argument("--profile", action="store_true", help="also py-spy radcore (1 worker) per mode")
    parser.add_argument("--profile-only", action="store_true", help="only the profile, no comparison")
    parser.add_argument("--profile-modes", default="card-auth,acct,call")
    parser.add_argument("--profile-server", default="radcore", choices=("radcore", "radcore-shm"))
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument("--render", metavar="JSON",
                        help="only rewrite compare.md/compare.png (and profile.md) from an earlier compare.json")
    parser.add_argument("--keep-profiles", action="store_true", help="keep the raw folded stacks under WORK/profiles")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.profile_modes = [m for m in args.profile_modes.split(",") if m]
    args.servers = [s for s in args.servers.split(",") if s]
    args.windows = sorted({int(w) for w in args.windows.split(",")})
    args.load_cpus = _cpu_list(args.load_cpus)
    args.out = Path(args.out)
    for m in args.modes + args.profile_modes:
        if m not in MODES:
            parser.error(f"unknown mode {m}")
    for s in args.servers + [args.profile_server]:
        if s not in SERVERS + EXTRA_SERVERS:
            parser.error(f"unknown server {s}")
    if args.profile_only:
        args.profile = True
        args.servers = [args.profile_server]
    elif args.profile and args.profile_server not in args.servers:
        args.servers.append(args.profile_server)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        return render(Path(args.render), args.out)
    work = args.work = Path(args.work)
    all_cpus = ",".join(map(str, sorted(set(_cpu_list(args.server_cpus)) | set(args.load_cpus))))

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"provisioning {args.cards:,} cards in {work} ...")
    manifest = provision(work / f"cards-{args.cards}", args.cards)
    cards = loadgen.load_cards(manifest["cards_file"])
    servers = {}
    factories = {
        "radcore": lambda: RadcoreServer(work, manifest, workers=1, cpus=args.server_cpus, label="radcore",
                                         batch_max=args.batch_max),
        "radcore-2w": lambda: RadcoreServer(work, manifest, workers=2, cpus=all_cpus, label="radcore-2w",
                                            batch_max=args.batch_max),
        "freeradius": lambda: FreeRadiusServer(work, manifest, cpus=args.server_cpus, threads=args.fr_threads),
        "pyrad": lambda: PyradServer(work, manifest, cpus=args.server_cpus),
        "radcore-shm": lambda: RadcoreServer(work, manifest, workers=1, cpus=args.server_cpus,
                                             label="radcore-shm", data_root=SHM, batch_max=args.batch_max),
        "radcore-shm-2w": lambda: RadcoreServer(work, manifest, workers=2, cpus=all_cpus,
                                                label="radcore-shm-2w", data_root=SHM,
                                                batch_max=args.batch_max),
    }
    try:
        for name in args.servers:
            if name == "freeradius" and shutil.which("freeradius") is None:
                log("freeradius is not installed: skipped")
                continue
            log(f"starting {name} ...")
            servers[name] = factories[name]().start()
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": f"{platform.machine()} {cpu_model()}",
            "cpus": os.cpu_count(), "python": platform.python_version(), "cards": args.cards,
            "duration": args.duration, "warmup": args.warmup, "timeout": args.timeout, "rounds": args.rounds,
            "windows": args.windows, "modes": args.modes, "servers": list(servers),
            "server_cpus": args.server_cpus, "load_cpus": args.load_cpus, "all_cpus": all_cpus,
            "server_info": {name: s.info() for name, s in servers.items()},
            "command": " ".join(["python -m bench.compare", *(argv if argv is not None else sys.argv[1:])]),
            "notes": _notes(args, ncpu),
            "fdatasync_us": fsync_probe(work),
            "code": code_state(),
            "loadavg_start": loadavg(),
        }
        log(f"fdatasync on {work}: p50 {meta['fdatasync_us']['p50']} µs, p99 {meta['fdatasync_us']['p99']} µs")
        result = {"meta": meta}
        if not args.profile_only:
            runs = run_matrix(servers, cards, args, log)
            meta["loadavg_end"] = loadavg()
            if code_state()["radcore_sha256"] != meta["code"]["radcore_sha256"]:
                meta["notes"].append("radcore's source changed while this ran: the servers kept the code "
                                     "they started with, but rerun to be sure what was measured.")
            agg = aggregate(runs)
            if "radcore" in agg and "card-auth" in agg["radcore"]:
                meta["half_peak"] = half_peak_latency(servers["radcore"], cards, agg["radcore"]["card-auth"],
                                                      args, log)
            result.update({"ratios": {name: ratios(agg, subject=name) for name in agg if name.startswith("radcore")},
                           "cells": agg, "runs": [compact(r) for r in runs]})
            (args.out / "compare.md").write_text(markdown(agg, runs, meta))
            if plot(agg, meta, args.out / "compare.png"):
                log(f"wrote {args.out / 'compare.png'}")
        if args.profile and args.profile_server in servers:
            prof = run_profile(servers[args.profile_server], cards, args, log)
            if prof:
                (args.out / "profile.md").write_text(profile_markdown(prof))
                (args.out / "profile.json").write_text(json.dumps(prof, indent=1))
                result["profile"] = prof
        if not args.profile_only:
            (args.out / "compare.json").write_text(json.dumps(result, separators=(",", ":"), default=str))
            log(f"wrote {args.out / 'compare.md'} and compare.json")
            print((args.out / "compare.md").read_text())
    finally:
        for s in servers.values():
            s.stop()
    return 0


def render(path: Path, out: Path) -> int:
    """Rewrite the Markdown and the plot of an earlier run from its compare.json."""
    result = json.loads(path.read_text())
    meta = result["meta"]
    meta.setdefault("code", {"commit": "", "changed": [], "radcore_sha256": "?"})
    agg = {server: {mode: {int(w): run for w, run in cells.items()} for mode, cells in modes.items()}
           for server, modes in result["cells"].items()}
    (out / "compare.md").write_text(markdown(agg, result.get("runs", []), meta))
    plot(agg, meta, out / "compare.png")
    if result.get("profile"):
        (out / "profile.md").write_text(profile_markdown(result["profile"]))
    print(f"wrote {out / 'compare.md'}")
    return 0


def _notes(args, ncpu: int) -> list[str]:
    notes = [
        ("radcore commits every batch durably (LMDB sync + metasync: fdatasync before the reply); FreeRADIUS's "
         "detail writer and the pyrad server append to a file without fsync, and neither keeps a balance, rates "
         "a call or reserves credit: their number authorization is a static users-file reply."),
        ("radcore's replies to Access-Requests carry a Message-Authenticator (HMAC-MD5), as do pyrad's; "
         "FreeRADIUS 3.2.1 sends none. All requests carry one and all servers require it."),
        ("Benchmark series: 1,000,000.00 USD per card and 65535 concurrent calls, because number-auth "
         "authorizes calls that never start (their reservations stay until the sweeper expires them)."),
        f"FreeRADIUS thread pool: {args.fr_threads} threads (start = max), pinned like the other servers.",
        (f"radcore: server.batch_max = {args.batch_max} (datagrams per batch, so per durable commit; the "
         "shipped default is 256)."),
    ]
    if ncpu <= 2:
        notes.append("Only 2 CPUs: the server and the load generator each get one; the machine is shared "
                     "and noisy, so compare ratios within this run, not absolute numbers across runs.")
    return notes


if __name__ == "__main__":
    sys.exit(main())
