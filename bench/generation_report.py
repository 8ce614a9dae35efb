"""The Markdown report of a result, and merging the runs of earlier invocations into one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.generation_stats import percentile

TARGET_RATIO = 3.0


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(*names), _row(*(["---"] * len(names)))]


_SOURCE_TAGS: dict[str, str] = {}


def _run_id(r: dict[str, Any]) -> str:
    src = r.get("source", "this run")
    return str(r["rep"]) if src == "this run" else f"{r['rep']} ({_SOURCE_TAGS.get(src, 'merged')})"


def _triple(d: dict[str, Any], digits: int = 2) -> str:
    return f"{_fmt(d['p50_ms'], digits)} / {_fmt(d['p99_ms'], digits)} / {_fmt(d['max_ms'], 1)}"


_LABELS = {"same": "same store", "nosync": "same store, generator sync off",
           "other": "other store (no shared lock)"}


def gen_label(r: dict[str, Any]) -> str:
    code = "baseline generation.py" if r.get("code") == "head" else "working-tree generation.py"
    run = f", PIN_RUN {r['pin_run']:,}" if r.get("pin_run") else ""
    pause = f", paced x{r['pause_factor']:g}" if r.get("pause_factor") else ""
    nice = f", nice {r['nice']}" if r.get("nice") else ""
    return f"{code}: {_LABELS.get(r['variant'], r['variant'])}{run}{pause}{nice}"


def pooled_idle_p99(runs: list[dict[str, Any]]) -> float | None:
    """Median over accounting runs of one invocation of the idle p99 before *and* after each
    generation: a baseline that one background-load spike in one idle window cannot move much."""
    values = [r[k]["p99_ms"] for r in runs if r["mode"] == "acct"
              for k in ("idle", "idle_after") if r.get(k, {}).get("p99_ms")]
    return percentile(values, 50)


def annotate(doc: dict[str, Any]) -> None:
    """Add the ratio of each run's during-generation p99 to the pooled idle p99 of its invocation."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in doc.get("latency", []):
        by_source.setdefault(r.get("source", "this run"), []).append(r)
    doc["pooled_idle_p99_ms"] = {src: pooled_idle_p99(runs) for src, runs in by_source.items()}
    for src, runs in by_source.items():
        pooled = doc["pooled_idle_p99_ms"][src]
        for r in runs:
            if r["mode"] == "acct" and pooled and r["during"]["p99_ms"]:
                r["p99_ratio_pooled"] = round(r["during"]["p99_ms"] / pooled, 2)
                r["meets_target_pooled"] = r["p99_ratio_pooled"] <= TARGET_RATIO


def _runs_sentence(doc: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for r in doc.get("latency", []):
        key = f"{r['mode']}|{gen_label(r)}|{r['chunk_size']}"
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return f"every measurement ran {doc['params']['repeat']} times"
    low, high = min(counts.values()), max(counts.values())
    return f"each RADIUS configuration ran {low} times" if low == high else \
        f"each RADIUS configuration ran {low} to {high} times"


def markdown(doc: dict[str, Any]) -> str:
    annotate(doc)
    m, p = doc["machine"], doc["params"]
    sources = []
    for item in doc.get("exports", []) + doc.get("generation", []) + doc.get("latency", []):
        src = item.get("source", "this run")
        if src != "this run" and src not in sources:
            sources.append(src)
    _SOURCE_TAGS.clear()
    _SOURCE_TAGS.update({src: chr(ord("A") + i) for i, src in enumerate(sources)})
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_start"])
    lines = ["# Card generation, export, and RADIUS during generation", "", f"`{doc['command']}`", "",
             (f"{m['date']} on {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, lmdb "
              f"{m.get('lmdb')}, openpyxl {m.get('openpyxl')}; load average at start {load}. Shared, noisy "
              f"machine: {_runs_sentence(doc)}, all runs shown."), ""]
    code = doc.get("generation_code") or {}
    if code:
        head = code.get("head") or {}
        origin = (f"the copy in `{head['commit'][5:]}`" if str(head.get("commit", "")).startswith("file ") else
                  f"as committed at {(head.get('commit') or '?')[:10]} (`--baseline-rev {code.get('baseline_rev', 'HEAD')}`)")
        lines += [(f"radcore/generation.py: working tree sha256 {code.get('current_sha256')}; baseline = {origin}, "
                   f"sha256 {head.get('sha256')}"
                   + (" (differs from the working tree: both are measured, labelled per row)"
                      if code.get("current_differs_from_head") else "")), ""]
    gens = doc.get("generation") or [dict(r["generation"], rep=r["rep"]) for r in doc.get("generation_export", [])]
    if gens:
        lines += [f"## Generating {p['cards']:,} cards (durable store: sync and metasync on)", ""]
        lines += _header("generation.py", "chunk_size", "run", "wall s", "cards/s", "peak RSS MiB (anon / file-backed)",
                         "data.mdb bytes", "bytes/card on disk", "LMDB written B/card", "write txns",
                         "lock hold p50 / p99 / max ms", "commit (fsync) p99 ms")
        for g in gens:
            mem = g["memory"]
            lines.append(_row("baseline" if g.get("code") == "head" else "working tree", _fmt(g["chunk_size"]), _run_id(g),
                              _fmt(g["wall_s"]), _fmt(g["cards_per_s"]),
                              f"{_fmt(mem['peak_rss_mib'])} ({_fmt(mem['peak_anon_mib'])} / "
                              f"{_fmt(mem['peak_file_mib'])})", _fmt(g["data_mdb_bytes"]),
                              _fmt(g["bytes_per_card_file"]), _fmt(g.get("written_bytes_per_card")),
                              _fmt(g["txn"]["count"]), _triple(g["txn"]["hold"], 1),
                              _fmt(g["txn"]["commit"]["p99_ms"])))
    exports = doc.get("exports") or [dict(e, rep=r["rep"]) for r in doc.get("generation_export", [])
                                     for e in r["exports"]]
    if exports:
        lines += ["", "## Exporting cards (admin, chunks written to a file)", ""]
        lines += _header("run", "format", "rows", "wall s", "rows/s", "peak RSS MiB", "of which anon / file-backed",
                         "RSS before export MiB", "file bytes")
        for e in exports:
            mem = e["memory"]
            lines.append(_row(_run_id(e), e["fmt"] + (" (openpyxl on lxml)" if e["lxml"] else ""), _fmt(e["rows"]),
                              _fmt(e["wall_s"]), _fmt(e["rows_per_s"]), _fmt(mem["peak_rss_mib"]),
                              f"{_fmt(mem['peak_anon_mib'])} / {_fmt(mem['peak_file_mib'])}",
                              _fmt(mem["start_rss_mib"]), _fmt(e["file_bytes"])))
    acct = [r for r in doc.get("latency", []) if r["mode"] == "acct"]
    if acct:
        lines += ["", (f"## Accounting latency while {p['latency_cards']:,} cards are generated ({p['rate']:.0f} "
                       f"req/s Start/Stop, {p['workers']} workers, target: p99 during <= {TARGET_RATIO:g} x idle)"), ""]
        pooled = doc.get("pooled_idle_p99_ms") or {}
        pooled_text = "; ".join(f"{_fmt(v, 2)} ms ({'this run' if k == 'this run' else _SOURCE_TAGS.get(k, k)})"
                                for k, v in pooled.items())
        lines += [(f"Ratio = p99 during generation / p99 idle of the same run (10 s before it). Because one "
                   f"background-load spike in a 10 s idle window can fake a pass, the second ratio divides by "
                   f"the pooled idle p99 of the invocation instead (median of every run's idle-before and "
                   f"idle-after p99: {pooled_text}). A configuration meets the target only if it passes on "
                   f"both in every run."), ""]
        lines += _header("generator", "chunk_size", "runs", "during p99 ms per run", "p99 ratio per run (own idle)",
                         "p99 ratio per run (pooled idle)", "meets 3x", "gen lock hold p50 / p99 ms per run",
                         "LMDB written B/card", "gen wall s per run")
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(acct, key=lambda r: (r.get("code") != "head", r["variant"], r["chunk_size"])):
            groups.setdefault(f"{gen_label(r)}|{r['chunk_size']}", []).append(r)
        for key, rs in groups.items():
            name, chunk = key.rsplit("|", 1)
            met = sum(bool(r["meets_target"] and r.get("meets_target_pooled")) for r in rs)
            lines.append(_row(name, _fmt(int(chunk)), len(rs), " / ".join(_fmt(r["during"]["p99_ms"]) for r in rs),
                              " / ".join(_fmt(r["p99_ratio"], 2) for r in rs),
                              " / ".join(_fmt(r.get("p99_ratio_pooled"), 2) for r in rs),
                              f"{met} of {len(rs)}",
                              " ; ".join(f"{_fmt(r['generation']['txn']['hold']['p50_ms'], 1)} / "
                                         f"{_fmt(r['generation']['txn']['hold']['p99_ms'], 1)}" for r in rs),
                              " / ".join(_fmt(r["generation"].get("written_bytes_per_card")) for r in rs),
                              " / ".join(_fmt(r["generation"]["wall_s"]) for r in rs)))
        lines += ["", "All runs:", ""]
        lines += _header("generator", "chunk_size", "run", "idle p50 / p99 / max ms", "during p50 / p99 / max ms",
                         "n during", "lost", "**p99 ratio**", "meets 3x", "idle-after p99 ms", "gen wall s",
                         "gen lock hold p50 / p99 / max ms", "lock held %", "LMDB written B/card",
                         "p99 in flight during a hold / not")
        for r in acct:
            i, d_, g = r["idle"], r["during"], r["generation"]
            held = g["txn"]["held_fraction"]
            ov = r["overlap"]
            lines.append(_row(gen_label(r), _fmt(r["chunk_size"]), _run_id(r), _triple(i), _triple(d_),
                              _fmt(d_["count"]), _fmt(d_["lost"] + i["lost"]), f"**{_fmt(r['p99_ratio'], 2)}**",
                              "yes" if r["meets_target"] else "NO",
                              _fmt(r.get("idle_after", {}).get("p99_ms"), 2), _fmt(g["wall_s"]),
                              _triple(g["txn"]["hold"]), _fmt(100 * held if held is not None else None, 0),
                              _fmt(g.get("written_bytes_per_card")),
                              f"{_fmt(ov['overlapping_hold']['p99_ms'], 2)} / "
                              f"{_fmt(ov['not_overlapping']['p99_ms'], 2)}"))
    auth = [r for r in doc.get("latency", []) if r["mode"] == "auth"]
    if auth:
        lines += ["", "## Card authentication throughput while generating (closed loop, 8 outstanding)", ""]
        lines += _header("generator", "chunk_size", "run", "idle req/s", "during req/s", "**ratio**",
                         "idle-after req/s", "idle p99 ms", "during p99 ms", "accepts", "timeouts", "gen wall s")
        for r in auth:
            i, d_ = r["idle"], r["during"]
            lines.append(_row(gen_label(r), _fmt(r["chunk_size"]), _run_id(r), _fmt(i["per_s"]), _fmt(d_["per_s"]),
                              f"**{_fmt(r['throughput_ratio'], 2)}**", _fmt(r.get("idle_after", {}).get("per_s")),
                              _fmt(i["latency_p99_ms"], 2), _fmt(d_["latency_p99_ms"], 2),
                              f"{_fmt(i['accepts'] + d_['accepts'])} of {_fmt(i['replies'] + d_['replies'])}",
                              _fmt(i["timeouts"] + d_["timeouts"]), _fmt(r["generation"]["wall_s"])))
    if _SOURCE_TAGS:
        lines += ["", "## Invocations merged into this report", ""]
        lines += [f"- **{tag}**: `{src}`" for src, tag in _SOURCE_TAGS.items()]
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def _earlier(path: str) -> tuple[dict[str, Any], str]:
    """An earlier result and the label its runs get in this one: its command and date."""
    earlier = json.loads(Path(path).read_text())
    return earlier, f"{earlier['command']} ({earlier['machine']['date']})"


def merge_exports(doc: dict[str, Any], path: str) -> None:
    """Add the exports (section 2) of the earlier result at `path` to `doc` (`--merge-exports`)."""
    earlier, source = _earlier(path)
    for rep_doc in earlier.get("generation_export", []):
        doc["exports"] += [dict(e, rep=rep_doc["rep"], source=source) for e in rep_doc["exports"]]
    doc["exports"] += [dict(e, source=e.get("source", source)) for e in earlier.get("exports", [])]


def merge_latency(doc: dict[str, Any], path: str) -> None:
    """Add the accounting/auth runs and generations of the earlier result at `path` to `doc`
    (`--merge-latency`), labelled with that invocation unless they were merged into it already."""
    earlier, source = _earlier(path)
    doc["latency"] += [dict(r, source=r.get("source") if r.get("source", "this run") != "this run" else source)
                       for r in earlier.get("latency", [])]
    doc["generation"] += [dict(g, source=g.get("source", source)) for g in earlier.get("generation", [])]
