"""Sections 1 and 2: generation and export figures, each measured in a child process."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.generation_child import GEN_SERIES, SMALL_SERIES, Child


def bench_generation(workdir: Path, *, cards: int, chunk_size: int = 0, code: str = "current",
                     head_path: str | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Section 1: generate `cards` cards into a fresh durable store under `workdir`/var (kept)."""
    path = workdir / "var"
    gen = Child({"task": "generate", "path": str(path), "provision": True, "series": GEN_SERIES,
                 "cards": cards, "chunk_size": chunk_size, "sync": True, "code": code,
                 "head_path": head_path}, workdir).wait()
    say(f"  generate {cards:,} ({code} generation.py, chunk {gen['chunk_size']}): {gen['wall_s']} s, "
        f"{gen['cards_per_s']:,} cards/s, peak RSS {gen['memory']['peak_rss_mib']} MiB (anon "
        f"{gen['memory']['peak_anon_mib']}), {gen['bytes_per_card_file']} B/card on disk, "
        f"{gen['written_bytes_per_card']} B/card written, hold p50/p99 {gen['txn']['hold']['p50_ms']}/"
        f"{gen['txn']['hold']['p99_ms']} ms")
    return gen


def bench_generation_and_export(workdir: Path, *, cards: int, small: int, chunk_size: int,
                                lxml_path: str | None, formats: tuple[str, ...] = ("xlsx", "csv"),
                                say: Callable[[str], None] = print) -> dict[str, Any]:
    """One repetition of sections 1 and 2 in a fresh data directory under `workdir`."""
    path = workdir / "var"
    gen = bench_generation(workdir, cards=cards, chunk_size=chunk_size, say=say)
    exports: list[dict[str, Any]] = []
    sizes = [(GEN_SERIES, cards)]
    if small and small < cards:
        # untimed: a smaller series in the same store, for the "does not grow with N" comparison
        Child({"task": "generate", "path": str(path), "series": SMALL_SERIES, "cards": small,
               "chunk_size": min(small, 20_000), "sync": False, "store_stats": False}, workdir).wait()
        sizes.insert(0, (SMALL_SERIES, small))
    variants = [(fmt, None) for fmt in formats]
    if lxml_path and "xlsx" in formats:
        variants.insert(1, ("xlsx", lxml_path))
    for fmt, extra in variants:
        # openpyxl on lxml is a what-if (lxml is not a dependency): the small size is enough to compare
        for series, rows in (sizes[:1] if extra else sizes):
            res = Child({"task": "export", "path": str(path), "series": series, "rows": rows, "fmt": fmt,
                         "out": str(workdir / f"export-{series}.{fmt}")}, workdir, extra_path=extra).wait()
            exports.append(res)
            say(f"  export {fmt}{'+lxml' if res['lxml'] else ''} {rows:,}: {res['wall_s']} s, "
                f"{res['rows_per_s']:,} rows/s, peak RSS {res['memory']['peak_rss_mib']} MiB "
                f"(anon {res['memory']['peak_anon_mib']}), {res['file_bytes']:,} B")
    shutil.rmtree(path, ignore_errors=True)
    return {"generation": gen, "exports": exports}
