"""Builders for the control-plane tests: a seeded store, principals, and a real gRPC server with
typed clients per token (plain functions and context managers, so each test opts in explicitly)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import grpc

from control import catalog
from control.auth import LOCAL, Principal, create_token
from control.grpc_server import ControlServer, create_server, graceful_shutdown
from control.rates import create_rate_table, put_rate
from helpers_store import NOW, open_store
from radcore.clock import FixedClock
from radcore.config import ControlConfig
from radcore.keys import KeyRing
from radcore.rating import Rate
from radcore.store import RateTable, Reseller, RoutingPlan, Store, TaxProfile

ADMIN = Principal("admin", "", "tk-admin0000000")
R1 = Principal("reseller", "r1", "tk-r10000000000")
R2 = Principal("reseller", "r2", "tk-r20000000000")
#: Price per minute 0.06 USD, billed 60/60 in the "std" table; "44" and a catch-all "".
UK = Rate(prefix="44", price_per_minute=60_000, connection_fee=10_000, min_volume=60, interval=60)
ANY = Rate(prefix="", price_per_minute=120_000, interval=1)


def seed(store: Store, clock: FixedClock) -> None:
    """Rate tables std (USD) and eur, tax profile vat (20%), routing plan gw, resellers r1 and r2."""
    create_rate_table(store, LOCAL, RateTable("std", "USD", "standard"), clock=clock)
    create_rate_table(store, LOCAL, RateTable("eur", "EUR"), clock=clock)
    put_rate(store, LOCAL, "std", UK, clock=clock)
    put_rate(store, LOCAL, "std", ANY, clock=clock)
    catalog.create(store, LOCAL, catalog.TAX_PROFILES, TaxProfile("vat", 200_000), clock=clock)
    catalog.create(store, LOCAL, catalog.ROUTING_PLANS, RoutingPlan("gw", "0011#"), clock=clock)
    for rid in ("r1", "r2"):
        catalog.create(store, LOCAL, catalog.RESELLERS, Reseller(rid, rid.upper()), clock=clock)


@dataclass
class Domain:
    store: Store
    keyring: KeyRing
    clock: FixedClock


@contextlib.contextmanager
def domain(tmp_path: Any, *, seeded: bool = True) -> Iterator[Domain]:
    store = open_store(tmp_path / "db", map_size=1 << 30)
    keyring = KeyRing.load_or_create(str(tmp_path / "radcore.key"))
    clock = FixedClock(NOW)
    try:
        if seeded:
            seed(store, clock)
        yield Domain(store, keyring, clock)
    finally:
        store.close()


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` (unless token is None) and records the methods called."""

    def __init__(self, token: str | None, called: set[str]):
        self.token, self.called = token, called

    def _details(self, details: Any) -> Any:
        self.called.add(details.method)
        if self.token is None:
            return details
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self.token}")]
        return details._replace(metadata=metadata)  # grpc's call details are a namedtuple

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class Client:
    """Stubs of every radcore service on one channel, authenticated as one token."""

    def __init__(self, channel: grpc.Channel, token: str | None, called: set[str]):
        from control._proto.radcore.v1 import radcore_pb2_grpc as g

        ch = grpc.intercept_channel(channel, _Bearer(token, called))
        self.series = g.SeriesServiceStub(ch)
        self.cards = g.CardServiceStub(ch)
        self.rates = g.RateServiceStub(ch)
        self.taxes = g.TaxProfileServiceStub(ch)
        self.routes = g.RoutingPlanServiceStub(ch)
        self.resellers = g.ResellerServiceStub(ch)
        self.fees = g.FeeServiceStub(ch)
        self.sessions = g.SessionServiceStub(ch)
        self.audit = g.AuditServiceStub(ch)
        self.tokens = g.TokenServiceStub(ch)


@dataclass
class Harness:
    env: Domain
    server: ControlServer
    port: int
    channel: grpc.Channel
    admin: Client
    admin_id: str
    called: set[str]

    def client(self, token: str | None) -> Client:
        return Client(self.channel, token, self.called)

    def token(self, role: str, reseller: str = "") -> tuple[str, Client]:
        token_id, secret = create_token(self.env.store, role, reseller, note="test", clock=self.env.clock)
        return token_id, self.client(secret)


@contextlib.contextmanager
def harness(tmp_path: Any, called: set[str] | None = None) -> Iterator[Harness]:
    """A seeded store, a started server on 127.0.0.1:0 with a FixedClock, an admin client. The
    server is stopped on exit, also when the test fails."""
    with domain(tmp_path) as env:
        server, port = create_server(env.store, env.keyring, ControlConfig(), address="127.0.0.1:0",
                                     clock=env.clock)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            called = set() if called is None else called
            admin_id, secret = create_token(env.store, "admin", "", note="admin", clock=env.clock)
            yield Harness(env, server, port, channel, Client(channel, secret, called), admin_id, called)
        finally:
            channel.close()
            graceful_shutdown(server, grace=1.0)


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The RpcError a call raises (streams are drained); fails the test if it succeeds."""
    try:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            list(result)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"{call} succeeded")


__all__ = ["NOW", "ADMIN", "R1", "R2", "UK", "ANY", "seed", "domain", "harness", "rpc_error", "Harness",
           "Client"]
