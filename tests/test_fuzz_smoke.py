"""The fuzz targets in fuzz/, run for real: each for FUZZ_SECONDS (default 60) in its own subprocess.

All four targets start together when the module's first test runs (the machine has 2 cores, so four
concurrent 60 s runs cost about 60 s of wall time, not 240), then each test waits for its own and
requires: exit status 0, no crash or timeout artifact (libFuzzer's `-timeout` turns a hang into a
failure), and a positive execution count, which is printed (`pytest -s` shows it; it is also in the
assertion message on failure). Without atheris the targets fall back to a plain mutation loop over
the same seeds (fuzz/_harness.py), so this file still runs them.

Before that, every committed seed goes through every target in-process: a regression seed that
once crashed stays fixed.

Long run (README): `FUZZ_SECONDS=3600 pytest tests/test_fuzz_smoke.py -s`, or one target directly,
with libFuzzer options, writing new inputs to a scratch corpus first and reading the seeds second:
`PYTHONPATH=.:fuzz .venv/bin/python fuzz/fuzz_decode.py /tmp/corpus-decode fuzz/corpus/decode
-max_len=4200 -timeout=10` (add `-max_total_time=N`; `-jobs`/`-workers` and `-merge=1` re-execute
the target, so put .venv/bin first on PATH for those). fuzz/seeds.py explains how to merge finds
back into the committed corpus.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Imported before the targets, so importing them here does not make atheris instrument radcore.
import radcore.packet  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
TARGETS = ("decode", "password", "message_authenticator", "accounting")
SECONDS = int(os.environ.get("FUZZ_SECONDS", "60"))


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory):
    """Start every target at once; yields target -> (Popen, work dir); kills leftovers by PID."""
    runs = {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(FUZZ)]))
    try:
        for target in TARGETS:
            work = tmp_path_factory.mktemp(f"fuzz-{target}")
            (work / "corpus").mkdir()
            cmd = [sys.executable, str(FUZZ / f"fuzz_{target}.py"), str(work / "corpus"),
                   str(FUZZ / "corpus" / target), f"-max_total_time={SECONDS}", "-timeout=10",
                   "-max_len=4200", "-rss_limit_mb=2048", "-print_final_stats=1",
                   f"-artifact_prefix={work}/"]
            with open(work / "fuzz.log", "wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
            runs[target] = (proc, work)
        yield runs
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _harness_targets():
    sys.path.insert(0, str(FUZZ))
    try:
        return {t: importlib.import_module(f"fuzz_{t}").test_one_input for t in TARGETS}
    finally:
        sys.path.remove(str(FUZZ))


def test_every_seed_passes_every_target():
    targets = _harness_targets()
    seeds = sorted(p for p in (FUZZ / "corpus").rglob("*") if p.is_file())
    assert {p.parent.name for p in seeds} == set(TARGETS), "a target has no seed corpus"
    for path in seeds:
        data = path.read_bytes()
        for target in targets.values():
            target(data)  # raises on a crash or a disagreement


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs_clean(fuzz_runs, target):
    proc, work = fuzz_runs[target]
    try:
        proc.wait(timeout=SECONDS + 180)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"fuzz_{target} did not finish (a hang the per-input timeout missed)")
    log = (work / "fuzz.log").read_text(errors="replace")
    artifacts = sorted(p.name for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-",
                                                                             "leak-", "slow-unit-")))
    assert proc.returncode == 0 and not artifacts, f"fuzz_{target}: rc {proc.returncode}, {artifacts}\n{log[-4000:]}"
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert done and int(done.group(1)) > 0, log[-2000:]
    engine = "atheris" if "INITED" in log else "fallback"
    print(f"\nfuzz_{target}: {int(done.group(1)):,} executions in {done.group(2)} s ({engine})")
