"""What every fuzz target shares: the two codecs, the comparison rule, an input reader, the driver.

Oracle, for every target: the Cython fast path and the reference `radcore.packet` must return equal
results or raise the same class with the same `reason` (the contract of `radcore.fastpath`), and no
input may raise anything else (an IndexError, a struct.error, a UnicodeError is a crash).

Driver: atheris (libFuzzer) when it is installed, with the reference codec instrumented for coverage
feedback; the Cython module is not instrumented but runs on every input. Without atheris the same
command line runs a plain mutation loop over the seed corpus (byte flips, truncation, splices, Length
rewrites), so CI exercises the targets either way. Both understand:

    python fuzz/fuzz_decode.py [NEW_CORPUS_DIR] fuzz/corpus/decode -max_total_time=60 -timeout=10

(FUZZ_ENGINE=fallback forces the loop even where atheris is installed) and end with libFuzzer's
summary line `Done N runs in T second(s)`; a crash exits non-zero and
leaves the input in `<artifact_prefix>crash-<sha1>`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import atheris
except ImportError:  # the fallback driver below takes over
    atheris = None
if os.environ.get("FUZZ_ENGINE") == "fallback":  # force it, e.g. to test the fallback itself
    atheris = None


def load_codecs():
    """(reference, fast path) with the reference instrumented when atheris drives."""
    fresh = atheris is not None and "radcore.packet" not in sys.modules  # not when imported by tests
    ctx = atheris.instrument_imports(include=["radcore"]) if fresh else contextlib.nullcontext()
    with ctx:
        from radcore import errors, packet
    try:
        from radcore import _fastpath
    except ImportError:
        if os.environ.get("RADCORE_REQUIRE_EXTENSIONS"):
            raise
        _fastpath = None
        print("fuzz: radcore._fastpath is not built; checking the reference codec alone", file=sys.stderr)
    return packet, _fastpath, errors


packet, fast, errors = load_codecs()
CODECS = [packet] + ([fast] if fast is not None else [])


class Mismatch(AssertionError):
    """The two implementations disagree, or an oracle failed."""


def outcome(fn, *args):
    """("ok", value) or ("error", class name, reason) for PacketError, ("raise", class) for the
    documented argument errors; anything else propagates (that is a crash)."""
    try:
        value = fn(*args)
    except errors.PacketError as exc:
        return ("error", type(exc).__name__, exc.reason)
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        return ("raise", type(exc).__name__)
    if type(value).__name__ == "Request":
        value = ("Request", tuple(value))
    elif isinstance(value, list):
        value = [("Request", tuple(v)) if type(v).__name__ == "Request" else
                 ("error", type(v).__name__, v.reason) if isinstance(v, errors.PacketError) else v
                 for v in value]
    return ("ok", value)


def same(name: str, *args):
    """Run `name` in both codecs; return the (agreed) outcome."""
    results = [outcome(getattr(codec, name), *args) for codec in CODECS]
    if any(r != results[0] for r in results[1:]):
        raise Mismatch(f"{name} differs: reference {results[0]!r} vs fast path {results[1]!r}")
    return results[0]


class Reader:
    """Turns fuzz bytes into structured choices; running out of bytes yields zeros, never raises."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def byte(self) -> int:
        chunk = self.take(1)
        return chunk[0] if chunk else 0

    def int_in(self, low: int, high: int) -> int:
        span = high - low + 1
        raw = int.from_bytes(self.take(4 if span > 0xFFFF else 2 if span > 0xFF else 1), "big")
        return low + raw % span

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def left(self) -> int:
        return len(self.data) - self.pos


# ---------------------------------------------------------------------------------------------
# Driver


def main(test_one_input) -> None:
    if atheris is not None:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
    else:
        sys.exit(_fallback(test_one_input, sys.argv[1:]))


def _fallback(test_one_input, args: list[str]) -> int:
    options = {a[1:].split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("-") and "=" in a}
    dirs = [Path(a) for a in args if not a.startswith("-")]
    seconds = float(options.get("max_total_time", 60))
    runs = int(options.get("runs", -1))
    prefix = options.get("artifact_prefix", "./")
    rng = random.Random(int(options.get("seed", time.time_ns() % 2**32)))
    seeds = [p.read_bytes() for d in dirs if d.is_dir() for p in sorted(d.iterdir()) if p.is_file()]
    seeds = seeds or [b""]
    print(f"fallback fuzzer (atheris not installed): {len(seeds)} seeds, {seconds:.0f} s", flush=True)
    started = time.monotonic()
    done = 0
    pool = list(seeds)
    while (runs < 0 or done < runs) and time.monotonic() - started < seconds:
        data = pool[done] if done < len(seeds) else _mutate(rng, rng.choice(pool), rng.choice(pool))
        try:
            test_one_input(data)
        except BaseException:
            name = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
            Path(name).write_bytes(data)
            print(f"==ERROR== crash on input {data.hex()} (written to {name})", file=sys.stderr)
            raise
        done += 1
        if len(pool) < 5000 and rng.random() < 0.01:
            pool.append(data)
    elapsed = max(1, int(time.monotonic() - started))
    print(f"Done {done} runs in {elapsed} second(s)", flush=True)
    return 0


def _mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(8)
        if kind == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif kind == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == 2:
            del buf[rng.randrange(len(buf) + 1):]
        elif kind == 3:
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        elif kind == 4 and buf:
            start = rng.randrange(len(buf))
            del buf[start:start + rng.randrange(1, 9)]
        elif kind == 5 and other:
            start = rng.randrange(len(other))
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = other[start:start + rng.randrange(1, 64)]
        elif kind == 6 and len(buf) >= 4:
            buf[2:4] = struct.pack("!H", max(0, min(65535, len(buf) + rng.randrange(-4, 5))))
        elif kind == 7 and len(buf) > 21:
            buf[rng.randrange(20, len(buf))] = rng.choice([0, 1, 2, 3, 18, 255])
    return bytes(buf[:8192])
