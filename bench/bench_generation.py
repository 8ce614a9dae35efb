"""Card generation and export at scale, and what generation does to RADIUS while it runs.

    python -m bench.bench_generation [--cards 1000000] [--out bench/results/generation.json]

The README's figures (issue: "time and peak memory to generate 1,000,000 cards and to export them to
XLSX, and RADIUS auth throughput while a 1,000,000-card series is being generated; p99 accounting
latency during generation within 3x of idle"):

1. **Generation**: `radcore.generation.generate_series` of N activated cards on a durable store
   (sync on, as the control plane opens it) in a temp dir, in a child process: wall time, cards/s,
   peak RSS (the child's VmHWM, and RssAnon/RssFile sampled every 20 ms so the LMDB map's
   file-backed pages can be told from heap), data.mdb size and bytes per card, and every write
   transaction's lock wait, hold time (lock acquired -> commit returned) and commit (fsync) time.
2. **Export**: `control.export.export_cards` as the admin (`control.auth.LOCAL`), chunks written to a
   file, in a child process, for the N-card series and a 100,000-card series in the same store
   (constant memory is the claim), XLSX and CSV. With `--lxml-path DIR` (a `pip install --target DIR
   lxml`, outside the project venv) the 100,000-card XLSX export also runs with openpyxl on lxml.
3. **RADIUS during generation**: a real server (`python -m radcore.supervisor ... --handler
   radcore.handler:make_handler`, 2 workers) on a store with a 1,000-card series and a rate table.
   An open-loop UDP client sends Accounting Start/Stop pairs at a fixed rate (400 req/s, distinct
   Acct-Session-Ids, 8 source ports) and times each request from send to response: first idle,
   then while a child process generates an N-card series in the same data directory (its own Store,
   same map size, sync on). p99(during)/p99(idle) is checked against the 3x target for several
   `chunk_size` values, with pacing (sleep k x the last lock hold after each chunk, via the
   progress callback), and three controls: the same generation into a *different* data directory
   (CPU and disk contention without the shared writer lock), into the same one with sync off (no
   fsync inside the lock), and at nice 0. The generating child runs at the niceness `radcore
   serve`'s control process gives itself (`control.nice`, 10) unless `:nN` says otherwise. Each
   configuration can run the working tree's radcore/generation.py or, as a baseline, the one
   committed at git HEAD (`:head`, read with `git show`, nothing is checked out), and can override
   its PIN_RUN (`:rN`). Separately,
   Access-Request (card authentication) throughput with a closed window of 8 outstanding
   requests, idle vs during generation.

Every measurement runs `--repeat` times (default 2: the machine is shared and noisy) and all runs are
reported, with the load average around each and an idle window after each generation as a drift
check. Results: JSON to `--out`, a Markdown table beside it (same name, `.md`), and with `--raw`
per-request samples and lock holds to `<out stem>.raw.json` (git-ignored). Nothing here asserts on
speed; `bench/test_bench_generation.py` runs the same code on a few thousand cards as a smoke test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.generation_child import (
    BASE_CARDS,
    MAP_SIZE_MB,
    child_main,
    head_generation_source,
)
from bench.generation_latency import latency_run
from bench.generation_report import gen_label, markdown, merge_exports, merge_latency
from bench.generation_runs import bench_generation, bench_generation_and_export
from bench.generation_stats import machine_info
from radcore.config import ControlConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

VARIANTS = ("same", "nosync", "other")
CONTROL_NICE = ControlConfig().nice


def _parse_configs(text: str) -> list[dict[str, Any]]:
    """"same,same:2000:head,nosync:2000:head,same:0:r1000000:n0" -> [{"variant", "chunk_size",
    "pause_factor", "pin_run", "nice", "code"}, ...]: VARIANT[:CHUNK[:pFACTOR][:rPIN_RUN][:nNICE][:head]],
    CHUNK empty or 0 = generate_series' own default; NICE defaults to the control process's
    (`control.nice`), since that is the process a served generation runs in."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        variant, *rest = item.split(":")
        if variant not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown generator variant {variant!r} (one of {VARIANTS})")
        config = {"variant": variant, "chunk_size": int(rest[0]) if rest and rest[0] else 0,
                  "pause_factor": 0.0, "pin_run": 0, "nice": CONTROL_NICE, "code": "current"}
        for token in rest[1:]:
            if token == "head":
                config["code"] = "head"
            elif token.startswith("p"):
                config["pause_factor"] = float(token[1:])
            elif token.startswith("n"):
                config["nice"] = int(token[1:])
            elif token.startswith("r"):
                config["pin_run"] = int(token[1:])
            else:
                raise argparse.ArgumentTypeError(f"bad option {token!r} in {item!r}")
        if config["code"] == "head" and config["pin_run"]:
            raise argparse.ArgumentTypeError(f"{item!r}: PIN_RUN applies to the working-tree code only")
        out.append(config)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_generation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=1_000_000, help="cards per generation (all sections)")
    parser.add_argument("--small", type=int, default=100_000,
                        help="second export size, for the constant-memory comparison (0 = skip)")
    parser.add_argument("--out", default=str(RESULTS / "generation.json"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=0,
                        help="section 1-2 chunk size (0 = generate_series' default)")
    parser.add_argument("--gen-codes", default="current,head",
                        help="section 1 (--sections gen) runs: current (working tree) and/or head (baseline)")
    parser.add_argument("--baseline-rev", default="HEAD",
                        help="git revision whose radcore/generation.py the `head` configurations run")
    parser.add_argument("--baseline-file", metavar="PY",
                        help="run the `head` configurations on this copy of radcore/generation.py instead "
                             "(no git needed; labelled by its sha256)")
    parser.add_argument("--first-rep", type=int, default=1, help="number of the first repetition (labels only)")
    parser.add_argument("--configs", type=_parse_configs,
                        default=_parse_configs("same:2000:head,same:200:head,same:10000:head,same:2000:p3:head,"
                                               "nosync:2000:head,other:2000:head,"
                                               "same,same:2000,same:10000,same:0:r1000000,same:0:n0,other"),
                        help="accounting runs as VARIANT[:CHUNK[:pPAUSE][:rPIN_RUN][:nNICE][:head]],...; VARIANT "
                             "is same, nosync (generator sync off) or other (another data dir); CHUNK 0 or "
                             "empty = the code's default; pPAUSE sleeps PAUSE x the last lock hold after each "
                             "chunk; rN sets generation.PIN_RUN; nN runs the generator at nice N (default: the "
                             "shipped control.nice, as a served generation runs); head uses "
                             "radcore/generation.py as committed at git HEAD")
    parser.add_argument("--auth-configs", type=_parse_configs, default=_parse_configs("same:2000:head,same"),
                        help="card-auth throughput runs, same syntax ('' = skip)")
    parser.add_argument("--rate", type=float, default=400.0, help="accounting requests per second")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lxml-path", help="a directory with lxml (pip install --target DIR lxml) to also "
                                            "run the small XLSX export with openpyxl on lxml")
    parser.add_argument("--sections", default="gen,export,acct,auth",
                        help="comma list of: gen (section 1), export (section 2, on a fresh generation), acct, auth")
    parser.add_argument("--merge-exports", metavar="JSON",
                        help="take section 2 (exports) from an earlier result instead of running it again")
    parser.add_argument("--merge-latency", metavar="JSON", action="append", default=[],
                        help="add the accounting/auth runs of an earlier result (labelled; pooled idle is per "
                             "invocation); repeatable")
    parser.add_argument("--workdir", help="where temp stores go (default: the system temp dir)")
    parser.add_argument("--raw", action="store_true", help="also write per-request samples to OUT.raw.json")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the Markdown beside an existing JSON result")
    parser.add_argument("--note", action="append", default=[], help="a note for the report (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.render:
        src = Path(args.render)
        doc = json.loads(src.read_text())
        text = markdown(doc)
        src.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        src.with_suffix(".md").write_text(text)
        return 0

    sections = set(filter(None, args.sections.split(",")))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="radcore-bench-gen-", dir=args.workdir))
    # git (read-only rev-parse/show) runs only when some configuration measures the baseline.
    wants_head = (("gen" in sections and "head" in args.gen_codes.split(","))
                  or any(c["code"] == "head" for c in (args.configs if "acct" in sections else [])
                         + (args.auth_configs if "auth" in sections else [])))
    head = None
    if wants_head and args.baseline_file:
        source = Path(args.baseline_file).read_bytes()
        (workdir / "generation_head.py").write_bytes(source)
        head = {"path": str(workdir / "generation_head.py"), "commit": f"file {args.baseline_file}",
                "sha256": hashlib.sha256(source).hexdigest()[:16]}
    elif wants_head:
        head = head_generation_source(workdir / "generation_head.py", args.baseline_rev)
    from radcore import generation as _current
    current_sha = hashlib.sha256(Path(_current.__file__).read_bytes()).hexdigest()[:16]
    doc: dict[str, Any] = {
        "command": "python -m bench.bench_generation " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "generation_code": {"current_sha256": current_sha, "head": head, "baseline_rev": args.baseline_rev,
                            "current_differs_from_head": bool(head and head["sha256"] != current_sha)},
        "params": {"cards": args.cards, "small": args.small, "repeat": args.repeat, "chunk_size": args.chunk_size,
                   "latency_cards": args.cards, "rate": args.rate, "idle_seconds": args.idle_seconds,
                   "workers": args.workers, "base_cards": BASE_CARDS, "map_size_mb": MAP_SIZE_MB,
                   "configs": args.configs, "auth_configs": args.auth_configs},
        "generation": [], "exports": [], "latency": [], "notes": list(args.note)}
    if args.merge_exports:
        merge_exports(doc, args.merge_exports)
    for path in args.merge_latency:
        merge_latency(doc, path)

    def say(text: str) -> None:
        print(text, flush=True)

    raw: list[dict[str, Any]] = []

    def save() -> None:
        doc["machine"]["loadavg_end"] = list(os.getloadavg())
        for r in doc["latency"]:
            if "raw" in r:
                raw.append({"label": gen_label(r), "mode": r["mode"], "chunk_size": r["chunk_size"],
                            "rep": r["rep"], **r.pop("raw")})
        text = markdown(doc)  # also annotates doc with the pooled-idle ratios
        out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        out.with_suffix(".md").write_text(text)
        if raw:
            out.with_suffix(".raw.json").write_text(json.dumps(raw))

    def check_code() -> None:
        sha = hashlib.sha256(Path(_current.__file__).read_bytes()).hexdigest()[:16]
        if sha != current_sha:
            note = (f"radcore/generation.py changed during this run (sha256 {current_sha} -> {sha}); "
                    "see each generation's generation_sha256")
            if note not in doc["notes"]:
                doc["notes"].append(note)
                say("WARNING: " + note)

    try:
        for rep in range(args.first_rep, args.first_rep + args.repeat):
            if "gen" in sections:
                for code in filter(None, args.gen_codes.split(",")):
                    if code == "head" and not head:
                        continue
                    say(f"[{rep}] generation, {code} generation.py")
                    d = Path(tempfile.mkdtemp(prefix="gen-", dir=workdir))
                    res = bench_generation(d, cards=args.cards, chunk_size=args.chunk_size, code=code,
                                           head_path=head["path"] if head else None, say=say)
                    doc["generation"].append(dict(res, rep=rep))
                    shutil.rmtree(d, ignore_errors=True)
                    check_code()
                    save()
            if "export" in sections:
                say(f"[{rep}] generation and export")
                d = Path(tempfile.mkdtemp(prefix="genexp-", dir=workdir))
                res = bench_generation_and_export(d, cards=args.cards, small=args.small,
                                                  chunk_size=args.chunk_size, lxml_path=args.lxml_path, say=say)
                doc["generation"].append(dict(res["generation"], rep=rep))
                doc["exports"] += [dict(e, rep=rep, source="this run") for e in res["exports"]]
                shutil.rmtree(d, ignore_errors=True)
                check_code()
                save()
            runs = ([("acct", c) for c in args.configs] if "acct" in sections else []) + \
                   ([("auth", c) for c in args.auth_configs] if "auth" in sections else [])
            for mode, c in runs:
                say(f"[{rep}] {mode}, generator {c}")
                if c["code"] == "head" and not head:
                    say("  skipped: no git HEAD copy of radcore/generation.py")
                    continue
                res = latency_run(workdir, mode=mode, cards=args.cards, chunk_size=c["chunk_size"],
                                  variant=c["variant"], pause_factor=c["pause_factor"], pin_run=c["pin_run"],
                                  nice=c["nice"], code=c["code"], head_path=head["path"] if head else None,
                                  rate=args.rate, idle_seconds=args.idle_seconds, workers=args.workers,
                                  say=say, keep_raw=args.raw)
                res["rep"] = rep
                doc["latency"].append(res)
                check_code()
                save()
    finally:
        save()
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
