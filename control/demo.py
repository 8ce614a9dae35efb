"""A demo series for `radcore serve --demo` (what `make run` starts): something to call right away.

Created once, idempotently: a rate table `demo` and series 45 of ten 10.00 USD cards. Running it again
finds them and prints the same card and PIN.
"""

from __future__ import annotations

from dataclasses import dataclass

from radcore.clock import Clock
from radcore.generation import generate_series
from radcore.keys import KeyRing
from radcore.rating import Rate, get_rate_table, put_rate, put_rate_table
from radcore.store import RateTable, Series, Store, card_key, format_card_number, get_card, get_series

DEMO_SERIES = 45
DEMO_TABLE = "demo"
DEMO_RATES = (
    Rate(prefix="1", price_per_minute=20_000, min_volume=6, interval=6),          # US/Canada 0.02
    Rate(prefix="44", price_per_minute=50_000, min_volume=30, interval=6),        # UK 0.05
    Rate(prefix="447", price_per_minute=150_000, min_volume=30, interval=6),      # UK mobile 0.15
    Rate(prefix="", price_per_minute=300_000, connection_fee=100_000, min_volume=60, interval=60),
)


@dataclass(frozen=True)
class DemoCard:
    number: str
    pin: str


def ensure_demo(store: Store, keyring: KeyRing, clock: Clock) -> DemoCard:
    """Create the demo rate table and series if they are missing; return the first card."""
    with store.begin(write=True) as txn:
        if get_rate_table(txn, store, DEMO_TABLE) is None:
            put_rate_table(txn, store, RateTable(name=DEMO_TABLE, currency="USD",
                                                 description="demo prices for `make run`"))
            for rate in DEMO_RATES:
                put_rate(txn, store, DEMO_TABLE, rate)
        existing = get_series(txn, store, DEMO_SERIES)
    if existing is None:
        generate_series(store, keyring, Series(
            number=DEMO_SERIES, name="Demo cards", face_balance=10_000_000, quantity=10,
            pin_length=10, rate_table=DEMO_TABLE, control_panel=True,
            notes="created by radcore serve --demo"), clock=clock)
    key = card_key(DEMO_SERIES, 0)
    with store.begin() as txn:
        card = get_card(txn, store, key)
    return DemoCard(format_card_number(DEMO_SERIES, 0), keyring.decrypt_pin(card.pin_blob, key))


def try_it(card: DemoCard, auth_listen: str, secret: str) -> str:
    """The one-line radclient commands printed at start-up."""
    return (
        "Try it:\n"
        f"  echo 'User-Name = \"{card.number}\", User-Password = \"{card.pin}\", "
        f"Message-Authenticator = 0x00' | radclient -x {auth_listen} auth {secret}\n"
        f"  echo 'User-Name = \"{card.number}\", User-Password = \"{card.pin}\", "
        f"Called-Station-Id = \"442079460000\", Message-Authenticator = 0x00' "
        f"| radclient -x {auth_listen} auth {secret}\n"
        "Manage it: radcore admin token create --local --config CONFIG --role admin, then\n"
        "  RADCORE_TOKEN=... radcore admin cards list --series 45"
    )
