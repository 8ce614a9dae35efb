"""The TOML configuration: listeners, limits, paths, NAS profiles and clients, validated on load.

A carrier edits this file by hand at 3 a.m., so every mistake is caught when the file is read and
reported as one `ConfigError` that names the file, the key path (`clients[2].secret`) and the
problem. Unknown keys are errors too: a misspelt `require_message_authenticator` that silently
fell back to its default would be a security bug, not a typo.

Layout (see `examples/radcore.toml` for a commented sample)::

    [server]    listeners, worker count, batching, duplicate cache, data directory
    [control]   gRPC, portal, TLS, fee scheduler, key file
    [prepaid]   PIN lockout, reservation grace, call cap, sweeper
    [profiles.NAME]          a NAS vendor profile: `base = "cisco"` plus overrides
    [profiles.NAME.return_codes]
    [[clients]] name, network (IP or CIDR), secret, profile, require_message_authenticator

Relative paths are resolved against the directory of the config file, not the working directory,
so `radcore serve --config /etc/radcore/radcore.toml` behaves the same from anywhere. This module
holds what a configuration is; `radcore.config_file.load_config` reads and validates one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .dictionary import VENDOR_CISCO, VENDOR_QUINTUM, ReturnCode

#: Outcome names a profile's `return_codes` may map: the `ReturnCode` members, lower-cased.
OUTCOMES = tuple(member.name.lower() for member in ReturnCode)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
NUMBER_ATTRIBUTES = ("Called-Station-Id", "h323-redirect-number")
VENDORS = (0, VENDOR_CISCO, VENDOR_QUINTUM)

#: `Config.client_for` forgets its cache past this many source addresses, so a flood of spoofed
#: sources can cost CPU (a longest-prefix walk each) but never unbounded memory.
_CLIENT_CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The RADIUS data plane. `workers = 0` means one per CPU; `metrics_listen = ""` disables /metrics.

    `duplicate_cache_seconds` should cover the NAS retransmission window (RFC 5080 §2.2.2); 0 turns
    the cache off, which makes every retransmitted Access-Request cost a full transaction.
    `map_size_mb` is the LMDB map size; every process opening the store must use the same value.
    `busy_poll_us`: after answering a batch, a worker polls its sockets this long before it sleeps,
    since more requests usually follow within microseconds and waking a sleeping process costs tens
    of them (more on a virtual machine); it costs at most that much CPU per batch, 0 turns it off.
    `checkpoint_ms`: while accounting arrives faster than batches are answered, a worker may keep its
    write transaction open this long, making each batch durable with one append to its write-ahead
    journal (radcore.journal) instead of an LMDB commit of every page it touched. Other processes
    (control plane, portal) see those batches at the commit, so at most this late; 0 commits every
    batch.
    """

    data_dir: str = "var"
    workers: int = 0
    auth_listen: str = "127.0.0.1:1812"
    acct_listen: str = "127.0.0.1:1813"
    metrics_listen: str = "127.0.0.1:9812"
    batch_max: int = 256
    duplicate_cache_seconds: int = 30
    busy_poll_us: int = 200
    checkpoint_ms: int = 250
    log_level: str = "info"
    map_size_mb: int = 8192


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The control plane. TLS is off unless both `tls_cert` and `tls_key` are set.

    `key_file` holds the PIN pepper and encryption key (created 0600 on first start); it defaults
    to `<data_dir>/radcore.key`, but operators who back up the data directory off-site should point
    it elsewhere, since the key and the encrypted PINs together reveal every PIN.

    `nice` is added to the control process's CPU niceness when it starts (0..19), so its batch work
    (series generation, exports, fee runs) gives way to the RADIUS workers wherever they compete
    for a core: generating 1,000,000 cards raised accounting's p99 less at nice 10 than at 0 in nine
    of nine alternating runs, and took no longer.
    """

    grpc_listen: str = "127.0.0.1:50051"
    portal_listen: str = "127.0.0.1:8080"
    tls_cert: str = ""
    tls_key: str = ""
    fee_interval_seconds: int = 300
    key_file: str = ""
    portal_secret_file: str = ""
    nice: int = 10


@dataclass(frozen=True, slots=True)
class PrepaidConfig:
    """Business limits. The reservation deadline is granted time + `reservation_grace_seconds`;
    a stopped session is remembered `session_retention_seconds` so a late duplicate Stop finds it
    settled instead of opening a Stop-only call and charging twice."""

    max_failed_pins: int = 5
    lockout_seconds: int = 900
    reservation_grace_seconds: int = 120
    max_call_seconds: int = 86400
    sweep_interval_seconds: int = 30
    pin_only_throttle_per_minute: int = 30
    session_retention_seconds: int = 86400


@dataclass(frozen=True, slots=True)
class Profile:
    """What a NAS vendor expects in replies and sends in requests.

    `vendor` 0 means no VSAs at all (only Session-Timeout and Reply-Message); 9 is Cisco, 6618 is
    Quintum. `prefixed_values` chooses `h323-credit-time=360` over `360`. `pin_only` lets the PIN
    alone identify the card (User-Name absent or ignored). `strip_plus`, `strip_00` and
    `tech_prefix` normalise the dialled number before rating. `routing_avpair` is a template such
    as `"route={route}"` returned in the vendor's AVPair when the series has a routing plan.
    `return_codes` maps outcome names (`OUTCOMES`) to the h323-return-code the gateway firmware
    understands; vendors and even firmware releases disagree, so operators override them per
    gateway in `[profiles.NAME.return_codes]`.
    """

    name: str
    vendor: int = 0
    prefixed_values: bool = False
    number_attribute: str = "Called-Station-Id"
    send_session_timeout: bool = True
    send_credit_time: bool = False
    pin_only: bool = False
    strip_plus: bool = True  # "+" marks E.164 everywhere; "00" is country-specific
    strip_00: bool = False
    tech_prefix: str = ""
    routing_avpair: str = ""
    return_codes: Mapping[str, int] = field(default_factory=lambda: _CISCO_CODES, hash=False)


_CISCO_CODES: Mapping[str, int] = MappingProxyType({m.name.lower(): int(m) for m in ReturnCode})

#: Quintum Tenor follows Cisco's debit-card numbering except where its firmware documents otherwise;
#: insufficient balance is the difference DESIGN.md records. Check your firmware's table.
_QUINTUM_CODES: Mapping[str, int] = MappingProxyType({**_CISCO_CODES, "insufficient_balance": 11})

BUILTIN_PROFILES: Mapping[str, Profile] = MappingProxyType({
    "cisco": Profile("cisco", vendor=VENDOR_CISCO, prefixed_values=True, send_session_timeout=True,
                     send_credit_time=True, return_codes=_CISCO_CODES),
    "quintum": Profile("quintum", vendor=VENDOR_QUINTUM, prefixed_values=False,
                       send_session_timeout=True, send_credit_time=True,
                       return_codes=_QUINTUM_CODES),
    "generic": Profile("generic", vendor=0, send_session_timeout=True, send_credit_time=False,
                       return_codes=_CISCO_CODES),
})


@dataclass(frozen=True, slots=True)
class Client:
    """A NAS allowed to talk to us. `network` is a single address (/32, /128) or a CIDR block.

    `require_message_authenticator` (default on) drops Access-Requests without a valid
    Message-Authenticator: the BlastRADIUS (CVE-2024-3596) mitigation. Turn it off only for
    gateways whose firmware cannot send one.
    """

    name: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    secret: bytes = field(repr=False)  # never in logs or tracebacks
    profile: Profile
    require_message_authenticator: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    """A loaded, validated configuration. `client_for` is the hot-path client lookup."""

    path: str
    server: ServerConfig
    control: ControlConfig
    prepaid: PrepaidConfig
    profiles: Mapping[str, Profile]
    clients: tuple[Client, ...]
    _exact: dict = field(init=False, repr=False, compare=False)
    _networks: tuple = field(init=False, repr=False, compare=False)
    _cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = {}
        networks = []
        for client in self.clients:
            net = client.network
            if net.prefixlen == net.max_prefixlen:
                exact[str(net.network_address)] = client
            else:
                networks.append(client)
        networks.sort(key=lambda c: c.network.prefixlen, reverse=True)
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_networks", tuple(networks))
        object.__setattr__(self, "_cache", {})

    def client_for(self, ip: str) -> Client | None:
        """The client for a source address: exact host entry first, then the longest prefix.

        Results, misses included, are cached per source string, so the common case is one dict
        hit per packet. An IPv4-mapped IPv6 source (a dual-stack `::` listener) matches the IPv4
        client.
        """
        try:
            return self._cache[ip]
        except KeyError:
            pass
        client = self._lookup(ip)
        if len(self._cache) >= _CLIENT_CACHE_LIMIT:
            self._cache.clear()
        self._cache[ip] = client
        return client

    def _lookup(self, ip: str) -> Client | None:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return None
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        client = self._exact.get(str(addr))
        if client is not None:
            return client
        for client in self._networks:
            if client.network.version == addr.version and addr in client.network:
                return client
        return None

    def with_clients_of(self, other: Config) -> Config:
        """This config with `other`'s clients and profiles: what a SIGHUP reload may change.

        Listeners, workers and paths stay as started; changing them needs a restart.
        """
        return dataclasses.replace(self, clients=other.clients, profiles=other.profiles)


def parse_listen(text: str) -> tuple[str, int]:
    """Split `"IP:PORT"` or `"[IPv6]:PORT"` into (host, port). Port 0 asks the kernel for one.

    Hostnames are refused on purpose: a listener must not depend on DNS at start-up.
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 listener as \"[ADDRESS]:PORT\"")
    if not sep or not host:
        raise ValueError(f"{text!r} is not \"IP:PORT\" or \"[IPv6]:PORT\"")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: port must be 0..65535")
    return host, int(port)
