"""Reading the TOML file into `radcore.config`'s dataclasses, every mistake caught on the way.

One `_Loader` walks the parsed file once and builds every error in the one format the operator reads:
the file, the key path (`clients[2].secret`) and the problem. Unknown keys are errors, defaults are
the dataclasses' own, relative paths are resolved against the file's directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import string
import tomllib
from types import MappingProxyType
from typing import Any

from .config import (
    BUILTIN_PROFILES,
    LOG_LEVELS,
    NUMBER_ATTRIBUTES,
    OUTCOMES,
    VENDORS,
    Client,
    Config,
    ControlConfig,
    PrepaidConfig,
    Profile,
    ServerConfig,
    parse_listen,
)
from .errors import ConfigError

log = logging.getLogger(__name__)


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a config file; raises `ConfigError` naming the file, key path and problem."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return _Loader(path).config(data)


_SECTIONS = ("server", "control", "prepaid", "profiles", "clients")


class _Loader:
    """Walks the parsed TOML once; `fail` builds every error message in the one format."""

    def __init__(self, path: str):
        self.path = path
        self.base_dir = os.path.dirname(path)

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {problem}")

    def config(self, data: dict) -> Config:
        for key in data:
            if key not in _SECTIONS:
                raise self.fail(key, f"unknown section (known: {', '.join(_SECTIONS)})")
        server = self.server(self.table(data, "server"))
        control = self.control(self.table(data, "control"), server)
        prepaid = PrepaidConfig(**self.fields(self.table(data, "prepaid"), "prepaid", PrepaidConfig))
        for name in ("max_failed_pins", "max_call_seconds", "sweep_interval_seconds"):
            self.at_least(getattr(prepaid, name), 1, f"prepaid.{name}")
        for name in ("lockout_seconds", "reservation_grace_seconds", "pin_only_throttle_per_minute",
                     "session_retention_seconds"):
            self.at_least(getattr(prepaid, name), 0, f"prepaid.{name}")
        profiles = self.profiles(self.table(data, "profiles"))
        clients = self.clients(data.get("clients", []), profiles)
        return Config(self.path, server, control, prepaid, MappingProxyType(profiles), clients)

    # -- sections ------------------------------------------------------------------------------

    def server(self, tbl: dict) -> ServerConfig:
        values = self.fields(tbl, "server", ServerConfig)
        values["data_dir"] = self.resolve(values.get("data_dir", ServerConfig().data_dir), "server.data_dir")
        cfg = ServerConfig(**values)
        self.between(cfg.workers, 0, 1024, "server.workers")
        self.between(cfg.batch_max, 1, 65536, "server.batch_max")
        self.between(cfg.duplicate_cache_seconds, 0, 3600, "server.duplicate_cache_seconds")
        self.between(cfg.busy_poll_us, 0, 100_000, "server.busy_poll_us")
        self.between(cfg.checkpoint_ms, 0, 10_000, "server.checkpoint_ms")
        self.at_least(cfg.map_size_mb, 1, "server.map_size_mb")
        if cfg.log_level not in LOG_LEVELS:
            raise self.fail("server.log_level", f"{cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        auth = self.listen(cfg.auth_listen, "server.auth_listen")
        acct = self.listen(cfg.acct_listen, "server.acct_listen")
        if auth == acct and auth[1] != 0:
            raise self.fail("server.acct_listen", f"same address as server.auth_listen ({cfg.auth_listen})")
        if cfg.metrics_listen:
            self.listen(cfg.metrics_listen, "server.metrics_listen")
        return cfg

    def control(self, tbl: dict, server: ServerConfig) -> ControlConfig:
        values = self.fields(tbl, "control", ControlConfig)
        for key in ("tls_cert", "tls_key", "portal_secret_file"):
            if values.get(key):
                values[key] = self.resolve(values[key], f"control.{key}")
        key_file = values.get("key_file", "")
        values["key_file"] = (self.resolve(key_file, "control.key_file") if key_file
                              else os.path.join(server.data_dir, "radcore.key"))
        cfg = ControlConfig(**values)
        self.listen(cfg.grpc_listen, "control.grpc_listen")
        self.listen(cfg.portal_listen, "control.portal_listen")
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            missing = "control.tls_key" if cfg.tls_cert else "control.tls_cert"
            raise self.fail(missing, "tls_cert and tls_key must be set together")
        self.at_least(cfg.fee_interval_seconds, 1, "control.fee_interval_seconds")
        self.between(cfg.nice, 0, 19, "control.nice")
        return cfg

    def profiles(self, tbl: dict) -> dict[str, Profile]:
        """Built-ins plus `[profiles.NAME]` tables; a table named like a built-in modifies it.

        `base` names the profile to start from (a built-in or another table, cycles refused); it
        defaults to the table's own name for built-ins and is required for new profiles.
        """
        resolved: dict[str, Profile] = dict(BUILTIN_PROFILES)
        done: set[str] = set()
        resolving: list[str] = []

        def resolve(name: str) -> Profile:
            where = f"profiles.{name}"
            if name in done:
                return resolved[name]
            if name in resolving:
                raise self.fail(f"{where}.base", f"cycle: {' -> '.join(resolving + [name])}")
            body = tbl[name]
            if not isinstance(body, dict):
                raise self.fail(where, "must be a table")
            base_name = body.get("base", name if name in BUILTIN_PROFILES else None)
            if base_name is None:
                known = ", ".join(sorted(set(tbl) | set(BUILTIN_PROFILES)))
                raise self.fail(f"{where}.base", f"required for a new profile (one of {known})")
            if not isinstance(base_name, str):
                raise self.fail(f"{where}.base", "must be a string")
            resolving.append(name)
            if base_name == name or base_name not in tbl:
                if base_name not in BUILTIN_PROFILES:
                    raise self.fail(f"{where}.base", f"unknown profile {base_name!r}")
                base = BUILTIN_PROFILES[base_name]
            else:
                base = resolve(base_name)
            resolving.pop()
            profile = self.profile(name, body, base)
            resolved[name] = profile
            done.add(name)
            return profile

        for name in tbl:
            if not name:
                raise self.fail("profiles", "a profile needs a non-empty name")
            resolve(name)
        return resolved

    def profile(self, name: str, body: dict, base: Profile) -> Profile:
        where = f"profiles.{name}"
        rest = {k: v for k, v in body.items() if k not in ("base", "return_codes")}
        values = self.fields(rest, where, Profile, skip=("name", "return_codes"))
        codes = dict(base.return_codes)
        overrides = body.get("return_codes", {})
        if not isinstance(overrides, dict):
            raise self.fail(f"{where}.return_codes", "must be a table of outcome = number")
        for outcome, number in overrides.items():
            key = f"{where}.return_codes.{outcome}"
            if outcome not in OUTCOMES:
                raise self.fail(key, f"unknown outcome (known: {', '.join(OUTCOMES)})")
            codes[outcome] = self.typed(number, "int", key)
            self.between(codes[outcome], 0, 2**31 - 1, key)
        profile = dataclasses.replace(base, name=name, return_codes=MappingProxyType(codes), **values)
        if profile.vendor not in VENDORS:
            raise self.fail(f"{where}.vendor",
                            f"{profile.vendor} is not 0 (generic), 9 (Cisco) or 6618 (Quintum)")
        if profile.number_attribute not in NUMBER_ATTRIBUTES:
            raise self.fail(f"{where}.number_attribute", f"must be one of {', '.join(NUMBER_ATTRIBUTES)}")
        if profile.vendor == 0:
            for key, bad in (("send_credit_time", profile.send_credit_time),
                             ("routing_avpair", profile.routing_avpair),
                             ("number_attribute", profile.number_attribute == "h323-redirect-number")):
                if bad:
                    raise self.fail(f"{where}.{key}",
                                    "needs vendor 9 or 6618: vendor 0 sends and reads no VSAs")
        if profile.routing_avpair:
            self.template(profile.routing_avpair, f"{where}.routing_avpair")
        return profile

    def clients(self, items: Any, profiles: dict[str, Profile]) -> tuple[Client, ...]:
        if not isinstance(items, list):
            raise self.fail("clients", "must be an array of tables ([[clients]])")
        out: list[Client] = []
        seen_networks: dict[Any, int] = {}
        seen_names: dict[str, int] = {}
        for i, item in enumerate(items):
            where = f"clients[{i}]"
            if not isinstance(item, dict):
                raise self.fail(where, "must be a table")
            for key in item:
                if key not in ("name", "network", "secret", "profile", "require_message_authenticator"):
                    raise self.fail(f"{where}.{key}", "unknown key (known: name, network, secret, profile, "
                                    "require_message_authenticator)")
            for key in ("network", "secret", "profile"):
                if key not in item:
                    raise self.fail(f"{where}.{key}", "is required")
            text = self.typed(item["network"], "str", f"{where}.network")
            try:
                network = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise self.fail(f"{where}.network",
                                f"{text!r} is not an IP address or CIDR network: {exc}") from None
            if network in seen_networks:
                raise self.fail(f"{where}.network", f"{network} is already clients[{seen_networks[network]}]")
            seen_networks[network] = i
            name = self.typed(item.get("name", str(network)), "str", f"{where}.name")
            if not name:
                raise self.fail(f"{where}.name", "must not be empty")
            if name in seen_names:
                raise self.fail(f"{where}.name", f"{name!r} is already clients[{seen_names[name]}]")
            seen_names[name] = i
            secret = self.typed(item["secret"], "str", f"{where}.secret")
            if not secret:
                raise self.fail(f"{where}.secret", "must not be empty")
            if len(secret) < 16:
                log.warning("%s: %s.secret (%s) is only %d characters; use at least 16 random ones",
                            self.path, where, name, len(secret))
            profile_name = self.typed(item["profile"], "str", f"{where}.profile")
            if profile_name not in profiles:
                raise self.fail(f"{where}.profile",
                                f"unknown profile {profile_name!r} (known: {', '.join(sorted(profiles))})")
            require_ma = self.typed(item.get("require_message_authenticator", True), "bool",
                                    f"{where}.require_message_authenticator")
            out.append(Client(name, network, secret.encode(), profiles[profile_name], require_ma))
        return tuple(out)

    # -- value checks --------------------------------------------------------------------------

    def table(self, data: dict, key: str) -> dict:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return value

    def fields(self, tbl: dict, where: str, cls: type, skip: tuple[str, ...] = ()) -> dict:
        """Type-checked values of `tbl` for the dataclass `cls`; unknown keys are errors."""
        known = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
        out = {}
        for key, value in tbl.items():
            if key not in known:
                raise self.fail(f"{where}.{key}", f"unknown key (known: {', '.join(known)})")
            out[key] = self.typed(value, known[key].type, f"{where}.{key}")
        return out

    def typed(self, value: Any, kind: str, where: str) -> Any:
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "str": isinstance(value, str),
              "bool": isinstance(value, bool)}[kind]
        if not ok:
            word = {"int": "an integer", "str": "a string", "bool": "true or false"}[kind]
            raise self.fail(where, f"must be {word}, not {type(value).__name__} {value!r}")
        return value

    def between(self, value: int, low: int, high: int, where: str) -> None:
        if not low <= value <= high:
            raise self.fail(where, f"{value} is outside {low}..{high}")

    def at_least(self, value: int, low: int, where: str) -> None:
        if value < low:
            raise self.fail(where, f"{value} is below the minimum {low}")

    def listen(self, text: str, where: str) -> tuple[str, int]:
        try:
            return parse_listen(text)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None

    def resolve(self, text: str, where: str) -> str:
        if not text:
            raise self.fail(where, "must not be empty")
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(text)))

    def template(self, text: str, where: str) -> None:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as exc:
            raise self.fail(where, f"bad template: {exc}") from None
        if not names <= {"route"}:
            raise self.fail(where, f"only {{route}} may be used, not {', '.join(sorted(names - {'route'}))}")
