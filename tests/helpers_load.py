"""Shared machinery for the reliability tests: a provisioned store, a prepaid server, a NAS that keeps
many requests in flight, store read-back and the rating oracle.

Everything goes over real UDP to a real `python -m radcore.supervisor` with the prepaid handler
(`ServerProcess` from helpers_server stops it by PID, also on failure). Packets are built with the
reference codec (`radcore.packet`), so the server's codec is never its own judge.

`Nas` is the load engine. A `Flight` is one logical request (card auth, number authorization, or one
accounting leg); each time it is (re)sent with a new Identifier it is rebuilt by its `build(ident,
attempt)`, so accounting retransmissions carry a growing Acct-Delay-Time, as RFC 2866 §5.2 asks.
Replies are matched by (socket, Identifier) *and* a verified Response Authenticator, so a late reply
to an older copy never acknowledges the wrong request. What gets no answer within `timeout` is sent
again with a new Identifier, until it is answered or the run's deadline passes.

Glossary: `flight` one logical request; `copy` one datagram of it on the wire; `ack` a verified reply.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import json
import os
import random
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from helpers_server import ServerProcess

from radcore import dictionary as d
from radcore import packet
from radcore.errors import PacketError
from radcore.generation import generate_series
from radcore.keys import KeyRing
from radcore.rating import Rate, cost, put_rate, put_rate_table
from radcore.store import (
    Card,
    CardStatus,
    RateTable,
    Series,
    Store,
    card_key,
    format_card_number,
    get_card,
    iter_card_cdrs,
)

SECRET = "load-test-secret-0123456789"
SERIES = 45
#: 1.00 = 1_000_000 micro-units. UK: 0.05 connection fee, 0.12/min on a 60 s minimum then 6 s steps.
UK = Rate(prefix="44", price_per_minute=120_000, connection_fee=50_000, min_volume=60, interval=6)
#: US: per-second billing with a 3 s free grace period.
US = Rate(prefix="1", price_per_minute=10_000, connection_fee=0, min_volume=1, interval=1, grace=3)
UK_NUMBER = "442079460000"
US_NUMBER = "12125550100"
RATES = {UK_NUMBER: UK, US_NUMBER: US}


# ---------------------------------------------------------------------------------------------
# Provisioning and the server


def provision(directory: Path, *, quantity: int, face_balance: int, activation_fee: int = 0,
              max_concurrent_calls: int = 1, initial_status: CardStatus = CardStatus.PENDING,
              map_size: int = 1 << 30, with_pins: bool = True) -> dict[int, str]:
    """Rate table "retail" (UK, US) and series 45 in `directory/var`; returns serial -> PIN.

    Run before the server starts: the store is closed again on return (an LMDB environment must
    not be open in two places of one process, and never across the server's fork).
    """
    data = directory / "var"
    store = Store(data, map_size=map_size)
    keyring = KeyRing.load_or_create(str(data / "radcore.key"))
    try:
        with store.begin(write=True) as txn:
            put_rate_table(txn, store, RateTable(name="retail", currency="USD"))
            put_rate(txn, store, "retail", UK)
            put_rate(txn, store, "retail", US)
        generate_series(store, keyring, Series(
            number=SERIES, name="reliability", face_balance=face_balance, quantity=quantity,
            pin_length=10, rate_table="retail", activation_fee=activation_fee,
            max_concurrent_calls=max_concurrent_calls, initial_status=initial_status),
            clock=lambda: int(time.time()), chunk_size=5000)
        pins: dict[int, str] = {}
        if with_pins:
            with store.begin() as txn:
                for serial in range(quantity):
                    key = card_key(SERIES, serial)
                    pins[serial] = keyring.decrypt_pin(get_card(txn, store, key).pin_blob, key)
        return pins
    finally:
        store.close()


def write_config(directory: Path, *, workers: int = 1, map_size_mb: int | None = None,
                 prepaid: dict | None = None, profiles: str = "", clients: list[dict] | None = None,
                 log_level: str = "info", batch_max: int | None = None,
                 duplicate_cache_seconds: int = 30, name: str = "radcore.toml") -> Path:
    """A loopback config (every port 0) for the prepaid handler; data in `directory/var`."""
    if clients is None:
        clients = [{"name": "gw", "network": "127.0.0.1", "secret": SECRET, "profile": "cisco"}]
    lines = ["[server]", 'data_dir = "var"', f"workers = {workers}",
             'auth_listen = "127.0.0.1:0"', 'acct_listen = "127.0.0.1:0"',
             'metrics_listen = "127.0.0.1:0"', f"duplicate_cache_seconds = {duplicate_cache_seconds}",
             f'log_level = "{log_level}"']
    if map_size_mb is not None:
        lines.append(f"map_size_mb = {map_size_mb}")
    if batch_max is not None:
        lines.append(f"batch_max = {batch_max}")
    lines += ["", "[control]", 'grpc_listen = "127.0.0.1:0"', 'portal_listen = "127.0.0.1:0"', ""]
    if prepaid:
        lines.append("[prepaid]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in prepaid.items()]
        lines.append("")
    lines.append(profiles)
    for client in clients:
        lines.append("[[clients]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in client.items()]
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


def prepaid_server(config: Path, **kwargs) -> ServerProcess:
    """The real server with the prepaid handler (use as a context manager)."""
    return ServerProcess(config, handler="radcore.handler:make_handler", **kwargs)


def worker_pids(supervisor: int) -> list[int]:
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
        return [int(pid) for pid in f.read().split()]


def rss_kib(pids: Iterable[int]) -> int:
    """Resident memory of the given processes (KiB); processes that are gone count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------------------------
# Packets as a Cisco gateway sends them (reference codec)


def number(serial: int) -> str:
    return format_card_number(SERIES, serial)


def ip_bytes(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def access_request(ident: int, user: str, pin: str, *, called: str = "", conf_id: str = "",
                   calling: str = "", nas_ip: str = "192.0.2.10", secret: str = SECRET,
                   proxy_state: bytes | None = None, message_authenticator: bool = True,
                   authenticator: bytes | None = None) -> bytes:
    attrs = [(d.USER_NAME, user.encode()), (d.NAS_IP_ADDRESS, ip_bytes(nas_ip))]
    if called:
        attrs.append((d.CALLED_STATION_ID, called.encode()))
    if calling:
        attrs.append((d.CALLING_STATION_ID, calling.encode()))
    if conf_id:
        attrs.append((d.vsa_key(d.VENDOR_CISCO, d.H323_CONF_ID), f"h323-conf-id={conf_id}".encode()))
    if proxy_state is not None:
        attrs.append((d.PROXY_STATE, proxy_state))
    return packet.encode_access_request(ident & 0xFF, authenticator or os.urandom(16), attrs,
                                        secret.encode(), password=pin.encode(),
                                        message_authenticator=message_authenticator)


def accounting_request(ident: int, user: str, status: int, conf_id: str, *, session_time: int | None = None,
                       delay: int = 0, called: str = UK_NUMBER, nas_ip: str = "192.0.2.10",
                       secret: str = SECRET) -> bytes:
    attrs = [(d.USER_NAME, user.encode()), (d.NAS_IP_ADDRESS, ip_bytes(nas_ip)),
             (d.ACCT_STATUS_TYPE, int(status).to_bytes(4, "big")),
             (d.ACCT_SESSION_ID, f"sess-{conf_id}".encode()),
             (d.vsa_key(d.VENDOR_CISCO, d.H323_CONF_ID), f"h323-conf-id={conf_id}".encode()),
             (d.CALLED_STATION_ID, called.encode())]
    if session_time is not None:
        attrs.append((d.ACCT_SESSION_TIME, session_time.to_bytes(4, "big")))
    if delay:
        attrs.append((d.ACCT_DELAY_TIME, delay.to_bytes(4, "big")))
    return packet.encode_accounting_request(ident & 0xFF, attrs, secret.encode())


def vsa_value(reply: packet.Packet, vendor_type: int) -> str | None:
    for key, value in reply.attributes:
        if key == d.vsa_key(d.VENDOR_CISCO, vendor_type):
            return packet.vsa_text(value, vendor_type)
    return None


def return_code(reply: packet.Packet) -> int | None:
    text = vsa_value(reply, d.H323_RETURN_CODE)
    return int(text) if text is not None else None


def credit_time(reply: packet.Packet) -> int | None:
    text = vsa_value(reply, d.H323_CREDIT_TIME)
    return int(text) if text is not None else None


# ---------------------------------------------------------------------------------------------
# The NAS: many flights in flight over several sockets


AUTH, ACCT = "auth", "acct"


@dataclasses.dataclass(eq=False)
class Flight:
    """One logical request. `build(ident, attempt)` makes the datagram for a (re)send."""

    kind: str                                   # AUTH or ACCT: which server port
    build: Callable[[int, int], bytes]
    tag: object = None                          # the caller's handle (call, leg, ...)
    on_ack: Callable[[Flight], Iterable[Flight] | None] | None = None
    reply: packet.Packet | None = None          # the first verified reply
    attempts: int = 0                           # sends with a new Identifier
    copies: int = 0                             # datagrams sent, verbatim repeats included
    last: tuple[int, int, bytes, bytes] | None = None   # (socket index, ident, datagram, request auth)

    @property
    def done(self) -> bool:
        return self.reply is not None


def auth_flight(user: str, pin: str, *, called: str = "", conf_id: str = "", tag: object = None,
                on_ack: Callable[[Flight], Iterable[Flight] | None] | None = None) -> Flight:
    """An Access-Request flight: card authentication, or number authorization with `called`."""
    return Flight(AUTH, functools.partial(_build_auth, user, pin, called, conf_id), tag=tag, on_ack=on_ack)


def acct_flight(user: str, status: int, conf_id: str, *, seconds: int | None = None,
                called: str = UK_NUMBER, tag: object = None,
                on_ack: Callable[[Flight], Iterable[Flight] | None] | None = None) -> Flight:
    """An Accounting-Request flight; each resend carries Acct-Delay-Time = its attempt number."""
    return Flight(ACCT, functools.partial(_build_acct, user, status, conf_id, seconds, called),
                  tag=tag, on_ack=on_ack)


def _build_auth(user: str, pin: str, called: str, conf_id: str, ident: int, attempt: int) -> bytes:
    return access_request(ident, user, pin, called=called, conf_id=conf_id)


def _build_acct(user: str, status: int, conf_id: str, seconds: int | None, called: str, ident: int,
                attempt: int) -> bytes:
    return accounting_request(ident, user, status, conf_id, session_time=seconds, delay=attempt, called=called)


class Nas:
    """A gateway with `sockets` UDP sockets on 127.0.0.1 and at most `window` flights awaiting a reply.

    `ports` maps AUTH/ACCT to the server's ports; update it after a restart and call `run` again
    with the flights that are still open (`open_flights`).
    """

    def __init__(self, ports: dict[str, int], *, sockets: int = 4, window: int = 256, timeout: float = 1.0,
                 secret: str = SECRET, source: str = "127.0.0.1", seed: int = 0):
        self.ports = dict(ports)
        self.window = window
        self.timeout = timeout
        self.secret = secret.encode()
        self.rng = random.Random(seed)
        self.socks = []
        for _ in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind((source, 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self._fileno = {sock.fileno(): i for i, sock in enumerate(self.socks)}
        self._free = [deque(range(256)) for _ in self.socks]
        self._owner: dict[tuple[int, int], tuple[Flight, bytes, float]] = {}
        self._next_sock = 0
        self.open_flights: list[Flight] = []
        self.sent = self.acked = self.retransmits = self.stale = self.lost = 0

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    def __enter__(self) -> Nas:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sending -------------------------------------------------------------------------------

    def _pick_socket(self) -> int | None:
        for _ in range(len(self.socks)):
            i = self._next_sock
            self._next_sock = (self._next_sock + 1) % len(self.socks)
            if self._free[i]:
                return i
        return None

    def send_new(self, flight: Flight, *, lose: bool = False) -> bool:
        """Send `flight` with a fresh Identifier; False if every Identifier of every socket is taken.
        `lose` builds and registers the datagram but drops it, as a lossy network would."""
        i = self._pick_socket()
        if i is None:
            return False
        ident = self._free[i].popleft()
        data = flight.build(ident, flight.attempts)
        flight.attempts += 1
        auth = data[4:20]
        flight.last = (i, ident, data, auth)
        self._owner[(i, ident)] = (flight, auth, time.monotonic())
        if lose:
            self.lost += 1
        else:
            self._transmit(i, data, flight)
        return True

    def send_verbatim(self, flight: Flight) -> None:
        """Repeat the last datagram byte for byte from the same socket (a NAS retransmission)."""
        if flight.last is None:
            self.send_new(flight)
            return
        i, ident, data, auth = flight.last
        owner = self._owner.get((i, ident))
        if owner is not None and owner[0] is flight:
            self._owner[(i, ident)] = (flight, auth, time.monotonic())
        self._transmit(i, data, flight)

    def _transmit(self, i: int, data: bytes, flight: Flight) -> None:
        port = self.ports[flight.kind]
        while True:
            try:
                self.socks[i].sendto(data, ("127.0.0.1", port))
                break
            except BlockingIOError:
                self.poll(0.001)
        flight.copies += 1
        self.sent += 1

    # -- receiving -----------------------------------------------------------------------------

    def poll(self, wait: float) -> list[Flight]:
        """Read every reply that is there (waiting up to `wait` for the first); returns newly acked."""
        acked = []
        ready, _, _ = select.select(self.socks, [], [], max(0.0, wait))
        for sock in ready:
            i = self._fileno[sock.fileno()]
            while True:
                try:
                    raw = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # ICMP port unreachable while the server is down
                    break
                flight = self._match(i, raw)
                if flight is not None:
                    acked.append(flight)
        return acked

    def _match(self, i: int, raw: bytes) -> Flight | None:
        if len(raw) < 20:
            return None
        key = (i, raw[1])
        owner = self._owner.get(key)
        if owner is None:
            self.stale += 1
            return None
        flight, auth, _ = owner
        try:
            reply = packet.decode_response(raw, auth, self.secret)
        except PacketError:
            self.stale += 1  # a late reply to an older request that used this Identifier
            return None
        del self._owner[key]
        self._free[i].append(raw[1])
        if flight.done:
            return None
        flight.reply = reply
        self.acked += 1
        return flight

    def _expire(self) -> list[Flight]:
        """Free Identifiers whose request went unanswered; returns flights to send again."""
        now = time.monotonic()
        again = []
        for key, (flight, _, sent_at) in list(self._owner.items()):
            if now - sent_at >= self.timeout:
                del self._owner[key]
                self._free[key[0]].append(key[1])
                if not flight.done and flight.last is not None and flight.last[:2] == key:
                    again.append(flight)
        return again

    # -- the loop ------------------------------------------------------------------------------

    def run(self, flights: Iterable[Flight], *, deadline: float | None = None,
            schedule: list[tuple[float, int, str, Flight]] | None = None,
            stop: Callable[[], bool] | None = None) -> list[Flight]:
        """Send `flights` (FIFO) keeping at most `window` unanswered, follow `on_ack` chains, and
        retransmit with a new Identifier what times out. `schedule` adds extra sends at given
        offsets from now: (seconds, seq, "verbatim" | "new", flight). Returns the flights still
        unanswered when everything else is done, `deadline` (monotonic) passes or `stop()` is true;
        they are also kept in `open_flights`."""
        queue: deque[Flight] = deque(flights)
        retry: deque[Flight] = deque()
        waiting: set[Flight] = set(queue)
        extra = list(schedule or [])
        heapq.heapify(extra)
        start = time.monotonic()
        inflight: set[Flight] = set()
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if stop is not None and stop():
                break
            while extra and start + extra[0][0] <= now:
                _, _, how, flight = heapq.heappop(extra)
                if how == "verbatim":
                    self.send_verbatim(flight)
                else:
                    self.send_new(flight)
                if not flight.done:
                    inflight.add(flight)
            while retry and len(inflight) < self.window:
                flight = retry.popleft()
                if flight.done:
                    continue
                if not self.send_new(flight):
                    retry.appendleft(flight)
                    break
                self.retransmits += 1
                inflight.add(flight)
            while queue and len(inflight) < self.window:
                flight = queue[0]
                if flight.done:
                    queue.popleft()
                    continue
                if not self.send_new(flight):
                    break
                queue.popleft()
                inflight.add(flight)
            if not queue and not retry and not extra and not inflight:
                break
            wait = 0.05
            if extra:
                wait = min(wait, max(0.0, start + extra[0][0] - time.monotonic()))
            for flight in self.poll(wait):
                inflight.discard(flight)
                waiting.discard(flight)
                if flight.on_ack is not None:
                    for follow in flight.on_ack(flight) or ():
                        queue.append(follow)
                        waiting.add(follow)
            for flight in self._expire():
                inflight.discard(flight)
                retry.append(flight)
            inflight = {f for f in inflight if not f.done}
        self.open_flights = [f for f in waiting if not f.done]
        return self.open_flights

    def blast(self, events: Iterable[tuple[str, Flight]], *, deadline: float) -> list[Flight]:
        """Send every (how, flight) event in the given order: "new" (a fresh Identifier, and for
        accounting a higher Acct-Delay-Time), "verbatim" (the last datagram again, same socket) or
        "lost" (a new copy the network drops: only a timeout retransmission can make up for it).
        At most `window` flights are awaiting their first reply; what times out is sent again with
        a new Identifier. Returns the flights still unanswered after the last event (finish them
        with `run`)."""
        unacked: set[Flight] = set()
        next_expire = time.monotonic()
        for n, (how, flight) in enumerate(events):
            while len(unacked) >= self.window or not any(self._free):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"blast stalled with {len(unacked)} unanswered flights")
                unacked.difference_update(self.poll(0.01))
                if time.monotonic() >= next_expire:
                    for again in self._expire():
                        if self.send_new(again):
                            self.retransmits += 1
                    next_expire = time.monotonic() + self.timeout / 4
            if how == "verbatim":
                self.send_verbatim(flight)
            else:
                self.send_new(flight, lose=how == "lost")
            if not flight.done:
                unacked.add(flight)
            if n % 64 == 0:
                unacked.difference_update(self.poll(0))
        unacked.difference_update(self.poll(0.05))
        return [f for f in unacked if not f.done]

    def drain(self, wait: float = 0.1) -> None:
        """Collect replies already on their way (e.g. right after the server was killed), follow
        their `on_ack` chains into `open_flights`, then forget everything still outstanding: a
        restarted server will never answer it."""
        open_flights = set(self.open_flights)
        deadline = time.monotonic() + wait
        while True:
            acked = self.poll(max(0.0, deadline - time.monotonic()))
            for flight in acked:
                open_flights.discard(flight)
                if flight.on_ack is not None:
                    open_flights.update(flight.on_ack(flight) or ())
            if not acked and time.monotonic() >= deadline:
                break
        self.open_flights = [f for f in open_flights if not f.done]
        for (i, ident) in list(self._owner):
            self._free[i].append(ident)
        self._owner.clear()


# ---------------------------------------------------------------------------------------------
# Store read-back


def read_cards(directory: Path, serials: Iterable[int], map_size: int = 1 << 30) -> dict[int, tuple[Card, list]]:
    """serial -> (Card, [Cdr, ...]) read from the (stopped) server's store."""
    store = Store(directory / "var", map_size=map_size)
    try:
        out = {}
        with store.begin() as txn:
            for serial in serials:
                key = card_key(SERIES, serial)
                out[serial] = (get_card(txn, store, key), [c for _, c in iter_card_cdrs(txn, store, key)])
        return out
    finally:
        store.close()


def read_sessions(directory: Path, map_size: int = 1 << 30) -> list:
    """Every session record in the store, as `Session` objects."""
    from radcore.store import Session
    store = Store(directory / "var", map_size=map_size)
    try:
        with store.begin() as txn:
            return [Session.unpack(v) for _, v in txn.cursor(db=store.sessions)]
    finally:
        store.close()


def call_cost(called: str, seconds: int) -> int:
    """The oracle: what a call of `seconds` to `called` costs (no tax in these tests)."""
    return cost(RATES[called], seconds)
