"""radcore, FreeRADIUS 3.2 and a pyrad server side by side: same cards, same load generator, same cores.

    python -m bench.compare                  # or: bench/compare   (defaults finish in ~5 min on 2 cores)
    python -m bench.compare --cards 20000 --modes card-auth,acct --windows 1,64 --duration 2
    python -m bench.compare --profile        # also py-spy and perf radcore's worker, break its time down
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
   radcore servers restart on a fresh copy of the provisioned store before each mode, so no mode
   pays for the calls an earlier one left open. `--tombstones N` provisions a store that already
   holds a day of stopped calls, as one in service does.
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
from pathlib import Path

from bench import loadgen, perf_profile
from bench.compare_report import (
    categorize,
    markdown,
    peak,
    plot,
    profile_markdown,
    ratios,
    render,
)
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
from radcore.config import ServerConfig

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
        batches = after["batches"] - before["batches"]
        summary["server_batch_avg"] = round((after["replies"] - before["replies"]) / batches, 1)
        summary["server_journaled_pct"] = round(100 * (after["journal_appends"] - before["journal_appends"])
                                                / batches, 1)
    if after.get("peak_rss_mib"):
        summary["server_peak_rss_mib"] = after["peak_rss_mib"]
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
            "bad": c["bad"], "batch_avg": run.get("server_batch_avg"),
            "peak_rss_mib": run.get("server_peak_rss_mib"), "journaled_pct": run.get("server_journaled_pct"),
            "loadgen_cores": run["loadgen_cores"],
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
            # Every mode starts from the provisioned store: number-auth leaves each call it authorizes
            # open until the sweeper expires it, and later modes must not pay for that.
            for name in names:
                if isinstance(servers[name], RadcoreServer) and (rnd or mode != args.modes[0]):
                    servers[name].restart()
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


# ---------------------------------------------------------------------------------------------
# Profile


def _under_load(server: RadcoreServer, cards, mode: str, window: int, args, tool):
    """Run `tool(worker pid)` while the load generator runs `mode` for `args.profile_seconds`, on a
    freshly restarted `server` (each mode on the provisioned store, as in the matrix). Returns
    (tool's result, the load run), or None if the server has not exactly one worker."""
    server.restart()
    workers = server.worker_pids()
    if len(workers) != 1:
        return None
    holder: dict = {}
    load_args = argparse.Namespace(**{**vars(args), "duration": args.profile_seconds + 1.0, "warmup": 0.5})

    def load():
        holder["run"] = run_cell(server, cards, mode, window, load_args)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1.0)
    try:
        result = tool(workers[0])
    finally:
        thread.join()
    return result, holder["run"]


def run_profile(server: RadcoreServer, cards, args, log) -> dict:
    """py-spy the single worker of `server` while each mode runs at the largest window, and, where
    perf may record, sample its CPU with perf in a second run (`bench.perf_profile`)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(pyspy):
        log("py-spy is not installed (pip install py-spy): no profile")
        return {}
    perf = perf_profile.available()
    if perf is None:
        log("perf is missing or may not record here (perf_event_paranoid): no CPU breakdown with the kernel")
    window = max(args.windows)
    seconds = args.profile_seconds
    results = {}
    for mode in args.profile_modes:
        def spy(pid):
            with tempfile.NamedTemporaryFile("r", suffix=".txt") as out:
                proc = subprocess.run([pyspy, "record", "--native", "--idle", "-r", "200",
                                       "-d", str(int(seconds)), "-f", "raw", "-o", out.name, "-p", str(pid)],
                                      capture_output=True, text=True, check=False)
                return proc, Path(out.name).read_text()

        done = _under_load(server, cards, mode, window, args, spy)
        if done is None:
            log("profile needs exactly one radcore worker")
            return {}
        (proc, folded), run = done
        if proc.returncode != 0 or not folded:
            log(f"py-spy failed: {proc.stderr.strip()[-500:]}")
            continue
        cats, leaves = categorize(folded)
        total = sum(cats.values())
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
        if perf is None:
            continue
        done = _under_load(server, cards, mode, window, args,
                           lambda pid: (pid, perf_profile.record(perf, pid, seconds)))
        if done is None:
            continue
        (pid, script), run = done
        cpu = perf_profile.breakdown(script, pid, run["requests_per_s"], seconds)
        if cpu:
            results[mode]["perf"] = {"requests_per_s": run["requests_per_s"], **cpu}
            log(f"perf {mode}: {run['requests_per_s']:,.0f} req/s, {cpu['cpu_us_per_request']} µs CPU per request")
        if args.keep_profiles:
            (args.work / "profiles" / f"perf-{mode}.txt").write_text(script)
    return results


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
    parser.add_argument("--tombstones", type=int, default=0,
                        help="calls stopped within the last day, already in radcore's store (bench.provision)")
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
    parser.add_argument("--checkpoint-ms", type=int, default=ServerConfig().checkpoint_ms,
                        help="radcore's server.checkpoint_ms: how long a backlog may defer the LMDB commit "
                             "behind the write-ahead journal (0: commit every batch)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "radcore-bench"),
                        help="provisioning cache and server directories")
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON, Markdown and PNG go")
    parser.add_argument("--profile", action="store_true",
                        help="also py-spy radcore (1 worker) per mode, and perf it where perf may record")
    parser.add_argument("--profile-only", action="store_true", help="only the profile, no comparison")
    parser.add_argument("--profile-modes", default="card-auth,acct,call")
    parser.add_argument("--profile-server", default="radcore", choices=("radcore", "radcore-shm"))
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument("--render", metavar="JSON",
                        help="only rewrite compare.md/compare.png (and profile.md) from an earlier compare.json")
    parser.add_argument("--keep-profiles", action="store_true",
                        help="keep the raw folded stacks (and perf's samples) under WORK/profiles")
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
    suffix = f"-{args.tombstones}-stopped" if args.tombstones else ""
    manifest = provision(work / f"cards-{args.cards}{suffix}", args.cards, tombstones=args.tombstones)
    cards = loadgen.load_cards(manifest["cards_file"])
    servers = {}
    tuning = {"batch_max": args.batch_max, "checkpoint_ms": args.checkpoint_ms}
    factories = {
        "radcore": lambda: RadcoreServer(work, manifest, workers=1, cpus=args.server_cpus, label="radcore",
                                         **tuning),
        "radcore-2w": lambda: RadcoreServer(work, manifest, workers=2, cpus=all_cpus, label="radcore-2w",
                                            **tuning),
        "freeradius": lambda: FreeRadiusServer(work, manifest, cpus=args.server_cpus, threads=args.fr_threads),
        "pyrad": lambda: PyradServer(work, manifest, cpus=args.server_cpus),
        "radcore-shm": lambda: RadcoreServer(work, manifest, workers=1, cpus=args.server_cpus,
                                             label="radcore-shm", data_root=SHM, **tuning),
        "radcore-shm-2w": lambda: RadcoreServer(work, manifest, workers=2, cpus=all_cpus,
                                                label="radcore-shm-2w", data_root=SHM, **tuning),
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
                earlier = args.out / "compare.json"
                if args.profile_only and earlier.exists():  # so --render keeps this profile
                    kept = json.loads(earlier.read_text())
                    kept["profile"] = prof
                    earlier.write_text(json.dumps(kept, separators=(",", ":"), default=str))
        if not args.profile_only:
            (args.out / "compare.json").write_text(json.dumps(result, separators=(",", ":"), default=str))
            log(f"wrote {args.out / 'compare.md'} and compare.json")
            print((args.out / "compare.md").read_text())
    finally:
        for s in servers.values():
            s.stop()
    return 0


def _notes(args, ncpu: int) -> list[str]:
    notes = [
        ("radcore makes every write batch durable before it replies: an LMDB commit (sync + metasync), or, "
         "while the next batch is already queued, an fdatasync'd append to its write-ahead journal with the "
         f"commit deferred up to server.checkpoint_ms ({args.checkpoint_ms} ms here). FreeRADIUS's "
         "detail writer and the pyrad server append to a file without fsync, and neither keeps a balance, rates "
         "a call or reserves credit: their number authorization is a static users-file reply."),
        ("radcore's replies to Access-Requests carry a Message-Authenticator (HMAC-MD5), as do pyrad's; "
         "FreeRADIUS 3.2.1 sends none. Every Access-Request carries one and all servers require it; "
         "Accounting-Requests carry none (their Request Authenticator signs them)."),
        ("Benchmark series: 1,000,000.00 USD per card and 65535 concurrent calls, because number-auth "
         "authorizes calls that never start (their reservations stay until the sweeper expires them)."),
        ("radcore sends a batch's replies of one size for one destination as UDP GSO messages (up to 64 "
         "datagrams each, cut by the kernel); the load generator's sockets are the destinations, as a "
         "switch's one RADIUS address and port would be. FreeRADIUS and pyrad send one datagram per call."),
        f"FreeRADIUS thread pool: {args.fr_threads} threads (start = max), pinned like the other servers.",
        (f"radcore: server.batch_max = {args.batch_max} (datagrams per batch, so per durable commit; the "
         "shipped default is 256)."),
    ]
    if args.tombstones:
        notes.append(f"radcore's store already holds {args.tombstones:,} calls stopped within the last day "
                     "(kept a day so that a late duplicate Stop is recognised), as a store in service does.")
    if ncpu <= 2:
        notes.append("Only 2 CPUs: the server and the load generator each get one; the machine is shared "
                     "and noisy, so compare ratios within this run, not absolute numbers across runs.")
    return notes


if __name__ == "__main__":
    sys.exit(main())
