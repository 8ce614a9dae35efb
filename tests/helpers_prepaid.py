"""A small prepaid world for tests: a store with a rate table, a tax profile, a generated series and
a handler deciding requests in-process, plus builders for the requests a Cisco gateway sends.

Requests go through the real codec (encode on the "NAS" side, `parse_request` on ours), so what the
handler sees is exactly what it would see from the wire.
"""

from __future__ import annotations

import itertools
import os
import random
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from radcore import dictionary as d
from radcore import packet
from radcore.clock import FixedClock
from radcore.config import Client, Config
from radcore.config_file import load_config
from radcore.generation import generate_series
from radcore.handler import PrepaidHandler
from radcore.keys import KeyRing
from radcore.rating import Rate, put_rate, put_rate_table
from radcore.store import (
    RateTable,
    Series,
    Store,
    TaxProfile,
    card_key,
    format_card_number,
    get_card,
)

SECRET = b"prepaid-test-secret-0123"
NAS_IP = "10.1.1.1"
T0 = 1_790_000_000  # 2026-09-21, a fixed "now"

# 1.00 = 1_000_000 micro-units
UK = Rate(prefix="44", price_per_minute=120_000, connection_fee=50_000, min_volume=60, interval=6)
UK_MOBILE = Rate(prefix="447", price_per_minute=300_000, connection_fee=0, min_volume=30, interval=6)
US = Rate(prefix="1", price_per_minute=10_000, connection_fee=0, min_volume=1, interval=1, grace=3)

CONFIG = """
[server]
data_dir = "{data}"
workers = 1
auth_listen = "127.0.0.1:0"
acct_listen = "127.0.0.1:0"
metrics_listen = ""

[prepaid]
max_failed_pins = 3
lockout_seconds = 600
reservation_grace_seconds = 60
max_call_seconds = 7200

[profiles.tenor-pin]
base = "quintum"
pin_only = true

[[clients]]
name = "cisco-gw"
network = "127.0.0.1"
secret = "{secret}"
profile = "cisco"

[[clients]]
name = "tenor"
network = "127.0.0.2"
secret = "{secret}"
profile = "quintum"

[[clients]]
name = "tenor-pin"
network = "127.0.0.3"
secret = "{secret}"
profile = "tenor-pin"
"""


@dataclass
class World:
    config: Config
    store: Store
    keyring: KeyRing
    clock: FixedClock
    handler: PrepaidHandler
    pins: dict[int, dict[int, str]] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def client(self, name: str = "cisco-gw") -> Client:
        return next(c for c in self.config.clients if c.name == name)

    def add_series(self, number: int, quantity: int = 3, **fields) -> Series:
        values = dict(name=f"series {number}", face_balance=10_000_000, quantity=quantity,
                      pin_length=10, rate_table="retail")
        values.update(fields)
        series = generate_series(self.store, self.keyring, Series(number=number, **values),
                                 clock=self.clock, chunk_size=500)
        pins = {}
        with self.store.begin() as txn:
            for serial in range(quantity):
                key = card_key(number, serial)
                pins[serial] = self.keyring.decrypt_pin(get_card(txn, self.store, key).pin_blob, key)
        self.pins[number] = pins
        return series

    def card(self, series: int, serial: int):
        with self.store.begin() as txn:
            return get_card(txn, self.store, card_key(series, serial))

    def number(self, series: int, serial: int) -> str:
        return format_card_number(series, serial)

    # -- requests as a gateway sends them ------------------------------------------------------

    def access(self, series: int, serial: int, *, pin: str | None = None, called: str = "",
               conf_id: str = "", client: str = "cisco-gw", user_name: str | None = None):
        pin = self.pins[series][serial] if pin is None else pin
        attrs = [(d.USER_NAME, (user_name if user_name is not None
                                else self.number(series, serial)).encode()),
                 (d.NAS_IP_ADDRESS, bytes(map(int, NAS_IP.split("."))))]
        if called:
            attrs.append((d.CALLED_STATION_ID, called.encode()))
        if conf_id:
            attrs.append((d.vsa_key(d.VENDOR_CISCO, d.H323_CONF_ID), f"h323-conf-id={conf_id}".encode()))
        raw = packet.encode_access_request(next(self.ids) & 0xFF, os.urandom(16), attrs, SECRET,
                                           password=pin.encode())
        return self.decide(raw, client)

    def accounting(self, series: int, serial: int, status: int, *, conf_id: str, session_time: int | None = None,
                   called: str = "", delay: int = 0, client: str = "cisco-gw", user_name: str | None = None):
        number = user_name if user_name is not None else self.number(series, serial)
        raw = accounting(number, status, conf_id=conf_id, session_id=f"sess-{conf_id}", called=called,
                         session_time=session_time, delay=delay, ident=next(self.ids) & 0xFF)
        return self.decide(raw, client)

    def nas_event(self, status: int, client: str = "cisco-gw"):
        attrs = [(d.NAS_IP_ADDRESS, bytes(map(int, NAS_IP.split(".")))),
                 (d.ACCT_STATUS_TYPE, status.to_bytes(4, "big"))]
        return self.decide(packet.encode_accounting_request(next(self.ids) & 0xFF, attrs, SECRET), client)

    def decide(self, raw: bytes, client: str):
        req = packet.parse_request(raw, SECRET, True)
        [reply] = self.handler.handle([(req, self.client(client), ("127.0.0.1", 40000))])
        return reply


def accounting(number: str, status: int, *, conf_id: str = "", session_id: str = "", session_time=None,
               called: str = "", delay: int = 0, nas_id: str = "", extra=(), secret: bytes = SECRET,
               ident: int | None = None) -> bytes:
    """An Accounting-Request from the test NAS (a random Identifier unless one is given)."""
    attrs = [(d.USER_NAME, number.encode()), (d.NAS_IP_ADDRESS, bytes(map(int, NAS_IP.split(".")))),
             (d.ACCT_STATUS_TYPE, status.to_bytes(4, "big"))]
    if nas_id:
        attrs.append((d.NAS_IDENTIFIER, nas_id.encode()))
    if session_id:
        attrs.append((d.ACCT_SESSION_ID, session_id.encode()))
    if conf_id:
        attrs.append((d.vsa_key(d.VENDOR_CISCO, d.H323_CONF_ID), f"h323-conf-id={conf_id}".encode()))
    if called:
        attrs.append((d.CALLED_STATION_ID, called.encode()))
    if session_time is not None:
        attrs.append((d.ACCT_SESSION_TIME, session_time.to_bytes(4, "big")))
    if delay:
        attrs.append((d.ACCT_DELAY_TIME, delay.to_bytes(4, "big")))
    attrs.extend(extra)
    return packet.encode_accounting_request(random.randrange(256) if ident is None else ident, attrs, secret)


def signed_accounting(raw: bytes, secret: bytes = SECRET, *, tamper: bool = False) -> bytes:
    """`raw` (an Accounting-Request) with a Message-Authenticator as its last attribute, made as a
    switch that signs its accounting makes it (RFC 3579 §3.2): the HMAC over the packet with a zero
    Request Authenticator and a zero MAC value, then the Request Authenticator over the result."""
    ma = bytes((d.MESSAGE_AUTHENTICATOR, 18)) + bytes(16)
    buf = bytearray(raw[:2] + (len(raw) + 18).to_bytes(2, "big") + bytes(16) + raw[20:] + ma)
    offset = len(buf) - 16
    buf[offset:] = packet.message_authenticator(bytes(buf), secret, bytes(16), offset)
    if tamper:
        buf[offset] ^= 1
    buf[4:20] = packet.request_authenticator(bytes(buf), secret)
    return bytes(buf)



def vsa(reply, vendor_type: int, vendor: int = d.VENDOR_CISCO) -> str | None:
    """The text of one h323 VSA in a handler reply, prefix stripped."""
    for key, value in reply[1]:
        if key == d.vsa_key(vendor, vendor_type):
            return packet.vsa_text(value, vendor_type)
    return None


def attr_int(reply, attr: int) -> int | None:
    for key, value in reply[1]:
        if key == attr:
            return int.from_bytes(value, "big")
    return None


def make_world(tmp_path: Path, extra_config: str = "") -> World:
    """A store with the `retail` rate table, the clients of CONFIG (plus `extra_config` TOML), a
    handler at T0; no series yet."""
    data = tmp_path / "data"
    conf = tmp_path / "radcore.toml"
    conf.write_text(textwrap.dedent(CONFIG.format(data=data, secret=SECRET.decode())) + textwrap.dedent(extra_config))
    config = load_config(conf)
    store = Store(data, map_size=1 << 30)
    keyring = KeyRing.load_or_create(str(tmp_path / "radcore.key"))
    clock = FixedClock(T0)
    with store.begin(write=True) as txn:
        put_rate_table(txn, store, RateTable(name="retail", currency="USD"))
        for rate in (UK, UK_MOBILE, US):
            put_rate(txn, store, "retail", rate)
        txn.put(b"vat20", TaxProfile(name="vat20", percent_ppm=200_000).to_bytes(), db=store.tax_profiles)
    handler = PrepaidHandler(config, clock=clock, store=store, keyring=keyring)
    return World(config, store, keyring, clock, handler)
