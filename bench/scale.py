"""Does card authentication slow down as the card store grows? 100,000 cards against 10,000,000.

    python -m bench.scale                                   # 100k vs 10M cards, about 15 min the first time
    python -m bench.scale --sizes 100000,1000000 --rounds 2 --duration 3

For each size the cards are provisioned once (`bench.provision`, radcore only, cached under
`--work`), then a 1-worker durable radcore runs on a fresh copy, pinned like `bench.compare`, and
the load generator runs card authentications at each window. Rounds alternate between the sizes, so
drift on a shared machine hits both alike; medians are reported.

The generator authenticates an evenly spaced sample of `--sample` cards from the whole series (the
same count for every size), so the larger store is read all over its B-tree rather than in one
corner, while the generator's own memory and card rotation stay the same.

Also reported per size: the LMDB file (bytes in use and on disk, per million cards) and the worker's
resident memory after the runs (anonymous and file-backed: LMDB's map is file pages the kernel
can drop, not heap). Output: `scale.json` and `scale.md` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.compare import RESULTS, _cpu_list, shape
from bench.machine import code_state, loadavg
from bench.provision import provision
from bench.servers import SECRET, RadcoreServer


def sample_cards(manifest: dict, count: int, out: Path) -> Path:
    """Every k-th card of the series, `count` in all, as a load-generator card file."""
    total = manifest["cards"]
    step = max(1, total // count)
    path = out / f"sample-{count}.txt"
    if path.exists():
        return path
    with open(manifest["cards_file"]) as src, open(path, "w") as dst:
        for i, line in enumerate(src):
            if i % step == 0:
                dst.write(line)
    return path


def store_figures(data: Path, cards: int) -> dict:
    import lmdb

    env = lmdb.open(str(data), readonly=True, lock=False, subdir=True)
    try:
        info, stat = env.info(), env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
    finally:
        env.close()
    st = os.stat(data / "data.mdb")
    millions = cards / 1e6
    return {"used_bytes": used, "disk_bytes": st.st_blocks * 512,
            "used_mib_per_million": round(used / millions / 2**20, 1),
            "bytes_per_card": round(used / cards, 1)}


def memory(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields.get("VmRSS", 0), "anon": fields.get("RssAnon", 0),
            "file": fields.get("RssFile", 0), "peak": fields.get("VmHWM", 0)}


def run(args) -> dict:
    work = Path(args.work)
    sizes = args.sizes
    manifests, samples = {}, {}
    for size in sizes:
        print(f"provisioning {size:,} cards (cached after the first time) ...", flush=True)
        started = time.monotonic()
        manifests[size] = provision(work / f"cards-{size}", size, freeradius=False)
        samples[size] = loadgen.load_cards(str(sample_cards(manifests[size], args.sample, work / f"cards-{size}")))
        print(f"  ready in {time.monotonic() - started:.0f} s", flush=True)
    runs: list[dict] = []
    memories: dict[int, dict] = {}
    stores: dict[int, dict] = {}
    for rnd in range(1, args.rounds + 1):
        order = sizes if rnd % 2 else list(reversed(sizes))
        for size in order:
            server = RadcoreServer(work, manifests[size], workers=1, cpus=args.server_cpus,
                                   label=f"scale-{size}").start()
            try:
                for window in args.windows:
                    procs, sockets, per_socket = shape(window, len(args.load_cpus))
                    summary = loadgen.run_load(
                        auth=server.auth, acct=server.acct, secret=SECRET.encode(), cards=samples[size],
                        mode="card-auth", window=per_socket, sockets=sockets, procs=procs,
                        duration=args.duration, warmup=args.warmup, timeout=args.timeout,
                        cpus=args.load_cpus)
                    runs.append({"cards": size, "window": window, "round": rnd,
                                 "requests_per_s": summary["requests_per_s"],
                                 "p50": summary["latency_us"]["p50"], "p99": summary["latency_us"]["p99"],
                                 "rejects": summary["counts"]["rejects"],
                                 "timeouts": summary["counts"]["timeouts"]})
                    print(f"  round {rnd}, {size:>10,} cards, {window:>3} in flight: "
                          f"{summary['requests_per_s']:>9,.0f} req/s", flush=True)
                workers = server.worker_pids()
                if workers:
                    memories[size] = memory(workers[0])
            finally:
                server.stop()
            stores[size] = store_figures(Path(manifests[size]["store"]), size)
    return {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "sizes": sizes,
                     "sample": args.sample, "windows": args.windows, "rounds": args.rounds,
                     "duration": args.duration, "server_cpus": args.server_cpus,
                     "load_cpus": args.load_cpus, "loadavg_end": loadavg(), "code": code_state()},
            "runs": runs, "memory": memories, "store": stores}


def summarize(result: dict) -> dict:
    """Per size: the median over rounds at each window, and the best of those (the peak)."""
    out = {}
    for size in result["meta"]["sizes"]:
        by_window = {}
        for window in result["meta"]["windows"]:
            rates = [r["requests_per_s"] for r in result["runs"] if r["cards"] == size and r["window"] == window]
            if rates:
                by_window[window] = statistics.median(rates)
        best = max(by_window, key=by_window.get)
        out[size] = {"by_window": by_window, "peak": by_window[best], "peak_window": best}
    return out


def markdown(result: dict) -> str:
    meta, summ = result["meta"], summarize(result)
    sizes = meta["sizes"]
    base = summ[sizes[0]]["peak"]
    lines = ["# Card authentication against store size", "",
             "<!-- GENERATED by bench/scale.py; rerun it rather than editing. -->", "",
             f"Run {meta['date']}, 1 durable radcore worker on CPU {meta['server_cpus']}, load generator on "
             f"CPU {','.join(map(str, meta['load_cpus']))}; {meta['rounds']} rounds alternating the sizes, "
             f"{meta['duration']} s per run, medians; every size authenticates an evenly spaced sample of "
             f"{meta['sample']:,} cards. Load average at the end: {meta['loadavg_end']}.", "",
             "| cards | " + " | ".join(f"{w} in flight" for w in meta["windows"])
             + " | peak req/s | vs smallest | LMDB in use | per million cards | bytes/card "
             "| worker RSS (anon + file) |",
             "|---:|" + "---:|" * len(meta["windows"]) + "---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        s, st, mem = summ[size], result["store"].get(size, {}), result["memory"].get(size, {})
        cells = [f"{s['by_window'].get(w, 0):,.0f}" for w in meta["windows"]]
        lines.append(
            f"| {size:,} | " + " | ".join(cells) + f" | {s['peak']:,.0f} | {s['peak'] / base:.2f}x "
            f"| {st.get('used_bytes', 0) / 2**20:,.0f} MiB | {st.get('used_mib_per_million', 0):,.1f} MiB "
            f"| {st.get('bytes_per_card', 0):,.0f} | {mem.get('rss', 0) / 2**20:,.0f} MiB "
            f"({mem.get('anon', 0) / 2**20:,.0f} + {mem.get('file', 0) / 2**20:,.0f}) |")
    lines += ["", "The file-backed part of the RSS is LMDB's read-only map: pages of the store the worker "
              "touched, shared with the page cache and dropped by the kernel under memory pressure.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    half = max(1, len(cpus) // 2)
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sizes", default="100000,10000000", help="card counts, comma separated")
    parser.add_argument("--sample", type=int, default=100_000, help="cards the load generator cycles through")
    parser.add_argument("--windows", default="64,256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--server-cpus", default=",".join(map(str, cpus[:half])))
    parser.add_argument("--load-cpus", default=",".join(map(str, cpus[half:] or cpus)))
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "radcore-bench"))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.windows = [int(w) for w in args.windows.split(",") if w]
    args.load_cpus = _cpu_list(args.load_cpus)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "scale.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
