"""Provision the same cards in radcore, in FreeRADIUS and in the pyrad baseline.

    python -m bench.provision --cards 100000 --out /tmp/radcore-bench

writes, under OUT:

- `radcore/var/`: an LMDB store with rate table `retail` (prefix 44: 0.12/min, 0.05 connection fee,
  60/6 s billing) and series 45 of N activated cards with 10-digit PINs, plus its key file. Servers
  must run on a *copy* of it (`copy_store`), so every run starts from the same state.
- `cards.txt`: `CARD-NUMBER PIN` per line, the load generator's input and the pyrad server's table.
- `freeradius/users`: the same cards for the FreeRADIUS `files` module, each with
  Cleartext-Password and the Access-Accept attributes radcore sends (h323-return-code, -credit-amount,
  -currency, -billing-model), and one DEFAULT entry adding h323-credit-time and Session-Timeout when
  the request carries a Called-Station-Id (number authorization).

Benchmark series settings, chosen so that throughput modes do not turn into reject tests:
face balance 1,000,000.00 USD and `max_concurrent_calls` 65535, because the `number-auth` mode
authorizes calls that are never started (each holds a reservation until the sweeper expires it),
and every card is authorized many times in one run. Calls in the other modes end with a Stop.
A `manifest.json` records what was made; a second run with the same parameters reuses it.

`--tombstones N` also files N calls that stopped within the last day, as a store a day into service
holds them (prepaid `session_retention_seconds` keeps each one a day, so that a late duplicate Stop
is recognised): random conf-ids from the load generator's NAS, on random cards. A fresh store makes
every session write cheap; this is the store real traffic meets. Such a store is rebuilt when it is
more than an hour old, so the tombstones do not all fall due in the middle of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

SERIES = 45
PIN_LENGTH = 10
FACE_BALANCE = 1_000_000 * 1_000_000          # micro-units: 1,000,000.00 USD
MAX_CONCURRENT = 65535
CALLED = "442079460000"                        # rated by prefix 44 below
NAS_IP = "192.0.2.10"                          # the load generator's NAS-IP-Address
RETENTION = 86_400                             # prepaid.session_retention_seconds' default
MAP_SIZE = 2 << 30                             # at least; every process opening the store must agree on it
MAP_BYTES_PER_CARD = 1024                      # about 4x what a card takes, so 10M cards fit with room
ACCEPT_ATTRIBUTES = (                          # what FreeRADIUS and pyrad answer a card authentication with
    ("h323-return-code", "h323-return-code=0"),
    ("h323-credit-amount", "h323-credit-amount=1000000.00"),
    ("h323-currency", "h323-currency=USD"),
    ("h323-billing-model", "h323-billing-model=1"),
)
CREDIT_TIME = 3600                             # number authorization: what radcore grants (max_call_seconds)
VERSION = 1


def map_size(cards: int) -> int:
    return max(MAP_SIZE, cards * MAP_BYTES_PER_CARD)


def provision(out: str | os.PathLike, cards: int = 100_000, *, force: bool = False,
              progress=None, freeradius: bool = True, tombstones: int = 0) -> dict:
    """Create (or reuse) everything under `out`; returns the manifest with absolute paths.

    `freeradius=False` skips the users file (radcore-only runs such as `bench.scale`, where ten
    million FreeRADIUS entries would only cost time and disk). `tombstones`: calls stopped within
    the last day, filed in the radcore store (module docstring).
    """
    out = Path(out).resolve()
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("cards") == cards and manifest.get("version") == VERSION
                and (manifest.get("freeradius_users") or not freeradius)
                and manifest.get("tombstones", 0) == tombstones
                and (not tombstones or time.time() - manifest.get("made", 0) < 3600)):
            return manifest
    if out.exists():
        for name in ("radcore", "freeradius", "cards.txt", "manifest.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pins = _provision_radcore(out / "radcore" / "var", cards, progress, tombstones)
    numbers = [f"{SERIES}-{serial:09d}" for serial in range(cards)]
    with open(out / "cards.txt", "w") as f:
        f.writelines(f"{n} {p}\n" for n, p in zip(numbers, pins))
    users = None
    if freeradius:
        (out / "freeradius").mkdir()
        users = out / "freeradius" / "users"
        write_freeradius_users(users, zip(numbers, pins))
    manifest = {"version": VERSION, "cards": cards, "series": SERIES, "called": CALLED,
                "store": str(out / "radcore" / "var"), "cards_file": str(out / "cards.txt"),
                "freeradius_users": str(users) if users else None, "map_size": map_size(cards),
                "tombstones": tombstones, "made": int(time.time()),
                "seconds": round(time.monotonic() - started, 1)}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def _provision_radcore(var: Path, count: int, progress, tombstones: int = 0) -> list[str]:
    from radcore.generation import generate_series
    from radcore.keys import KeyRing
    from radcore.rating import Rate, put_rate, put_rate_table
    from radcore.store import CardStatus, RateTable, Series, Store, card_key, get_card

    store = Store(var, map_size=map_size(count), sync=False)   # durability is not needed to build a template
    keyring = KeyRing.load_or_create(var / "radcore.key")
    try:
        with store.begin(write=True) as txn:
            put_rate_table(txn, store, RateTable(name="retail", currency="USD"))
            put_rate(txn, store, "retail", Rate(prefix="44", price_per_minute=120_000,
                                                 connection_fee=50_000, min_volume=60, interval=6))
        generate_series(store, keyring, Series(
            number=SERIES, name="bench", face_balance=FACE_BALANCE, quantity=count,
            pin_length=PIN_LENGTH, rate_table="retail", initial_status=CardStatus.ACTIVATED,
            max_concurrent_calls=MAX_CONCURRENT), clock=lambda: int(time.time()),
            chunk_size=min(count, 20_000), progress=progress)
        _file_tombstones(store, tombstones, count)
        with store.begin() as txn:
            pins = []
            for serial in range(count):
                key = card_key(SERIES, serial)
                pins.append(keyring.decrypt_pin(get_card(txn, store, key).pin_blob, key))
        store.env.sync(True)
        return pins
    finally:
        store.close()


def _file_tombstones(store, count: int, cards: int) -> None:
    """`count` stopped calls, through the store's own put_session (so they land where the code under
    test keeps tombstones), stopped evenly over the last day: each is due RETENTION after its Stop."""
    from radcore.store import Session, SessionState, card_key, put_session, session_key

    rng = random.Random(count)
    now = int(time.time())
    for first in range(0, count, 50_000):
        with store.begin(write=True) as txn:
            for _ in range(first, min(count, first + 50_000)):
                conf = " ".join(f"{rng.getrandbits(32):08X}" for _ in range(4))
                stopped = now - rng.randrange(RETENTION)
                put_session(txn, store, session_key(NAS_IP, conf), Session(
                    card_key=card_key(SERIES, rng.randrange(cards)), state=SessionState.STOPPED,
                    opened_at=stopped - 120, deadline=stopped + RETENTION, charged=290_000,
                    last_session_time=120, price_per_minute=120_000, connection_fee=50_000,
                    min_volume=60, interval=6, prefix="44", called=CALLED, acct_session_id=conf[:8],
                    conf_id=conf, nas=NAS_IP))


def copy_store(manifest: dict, dest: str | os.PathLike) -> Path:
    """A fresh copy of the provisioned store (data.mdb + key file) at `dest`; returns its path."""
    src = Path(manifest["store"])
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True, mode=0o700)
    shutil.copyfile(src / "data.mdb", dest / "data.mdb")
    shutil.copyfile(src / "radcore.key", dest / "radcore.key")
    os.chmod(dest / "radcore.key", 0o600)
    return dest


def write_freeradius_users(path: str | os.PathLike, cards) -> None:
    """A `files` users file: one entry per card, then the number-authorization DEFAULT."""
    reply = ",\n".join(f'\t{name} = "{value}"' for name, value in ACCEPT_ATTRIBUTES)
    with open(path, "w") as f:
        f.writelines(f'{number}\tCleartext-Password := "{pin}"\n{reply},\n\tFall-Through = Yes\n\n'
                     for number, pin in cards)
        f.write(f'DEFAULT\tCalled-Station-Id =* ANY\n\th323-credit-time = "h323-credit-time={CREDIT_TIME}",\n'
                f'\tSession-Timeout = {CREDIT_TIME}\n')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.provision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--out", required=True, help="directory to write (reused when it matches)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT matches")
    parser.add_argument("--tombstones", type=int, default=0, help="calls stopped within the last day")
    args = parser.parse_args(argv)
    manifest = provision(args.out, args.cards, force=args.force, tombstones=args.tombstones)
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
