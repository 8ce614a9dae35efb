"""Config loading: defaults, path resolution, every validation error naming file and key, client
lookup by longest prefix, and NAS profile overrides."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from radcore.config import BUILTIN_PROFILES, OUTCOMES, Config, parse_listen
from radcore.config_file import load_config
from radcore.dictionary import ReturnCode
from radcore.errors import ConfigError

GOOD_CLIENT = '[[clients]]\nnetwork = "127.0.0.1"\nsecret = "0123456789abcdef0123"\nprofile = "cisco"\n'


def write(tmp_path: Path, text: str, name: str = "radcore.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path):
    path = write(tmp_path, "")
    cfg = load_config(path)
    assert cfg.path == str(path)
    assert cfg.server.data_dir == str(tmp_path / "var")
    assert cfg.control.key_file == str(tmp_path / "var" / "radcore.key")
    assert cfg.server.workers == 0 and cfg.server.batch_max == 256
    assert cfg.server.auth_listen == "127.0.0.1:1812" and cfg.server.acct_listen == "127.0.0.1:1813"
    assert cfg.server.metrics_listen == "127.0.0.1:9812"
    assert cfg.server.duplicate_cache_seconds == 30 and cfg.server.map_size_mb == 8192
    assert cfg.server.busy_poll_us == 200 and cfg.server.checkpoint_ms == 250
    assert cfg.control.grpc_listen == "127.0.0.1:50051" and cfg.control.portal_listen == "127.0.0.1:8080"
    assert cfg.control.nice == 10
    assert cfg.prepaid.max_failed_pins == 5 and cfg.prepaid.reservation_grace_seconds == 120
    assert cfg.clients == ()
    assert set(cfg.profiles) == {"cisco", "quintum", "generic"}


def test_data_dir_resolves_against_the_config_file_not_the_cwd(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc" / "radcore"
    conf_dir.mkdir(parents=True)
    path = write(conf_dir, '[server]\ndata_dir = "../../state"\n'
                           '[control]\nkey_file = "keys/radcore.key"\n'
                           'tls_cert = "c.pem"\ntls_key = "/abs/k.pem"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(os.path.relpath(path))
    assert cfg.server.data_dir == str(tmp_path / "state")
    assert cfg.control.key_file == str(conf_dir / "keys" / "radcore.key")
    assert cfg.control.tls_cert == str(conf_dir / "c.pem")
    assert cfg.control.tls_key == "/abs/k.pem"
    assert cfg.path == str(path)


def test_example_config_loads():
    cfg = load_config(Path(__file__).resolve().parent.parent / "examples" / "radcore.toml")
    client = cfg.client_for("127.0.0.1")
    assert client is not None
    assert client.secret == b"radcore-demo-secret-2026"
    assert client.profile.name == "cisco" and client.require_message_authenticator
    assert cfg.server.auth_listen.startswith("127.0.0.1:")


BAD = [
    # (toml text, key path, words in the problem)
    ("[bogus]\n", "bogus", "unknown section"),
    ("server = 3\n", "server", "must be a table"),
    ("[server]\nbogus = 1\n", "server.bogus", "unknown key"),
    ("[server]\nworkers = -1\n", "server.workers", "outside 0..1024"),
    ('[server]\nworkers = "2"\n', "server.workers", "must be an integer"),
    ("[server]\nworkers = true\n", "server.workers", "must be an integer"),
    ("[server]\nbatch_max = 0\n", "server.batch_max", "outside"),
    ("[server]\nduplicate_cache_seconds = -5\n", "server.duplicate_cache_seconds", "outside"),
    ("[server]\nbusy_poll_us = 200000\n", "server.busy_poll_us", "outside"),
    ("[server]\ncheckpoint_ms = -1\n", "server.checkpoint_ms", "outside"),
    ("[server]\nmap_size_mb = 0\n", "server.map_size_mb", "minimum"),
    ('[server]\nlog_level = "loud"\n', "server.log_level", "not one of"),
    ('[server]\ndata_dir = ""\n', "server.data_dir", "must not be empty"),
    ('[server]\nauth_listen = "localhost:1812"\n', "server.auth_listen", "not an IP address"),
    ('[server]\nauth_listen = "127.0.0.1:70000"\n', "server.auth_listen", "0..65535"),
    ('[server]\nauth_listen = "::1:1812"\n', "server.auth_listen", "[ADDRESS]:PORT"),
    ('[server]\nauth_listen = "1812"\n', "server.auth_listen", "IP:PORT"),
    ('[server]\nacct_listen = "127.0.0.1:1812"\n', "server.acct_listen", "same address"),
    ('[server]\nmetrics_listen = "nope"\n', "server.metrics_listen", "IP:PORT"),
    ('[control]\ntls_cert = "c.pem"\n', "control.tls_key", "set together"),
    ('[control]\ngrpc_listen = "1.2.3:5"\n', "control.grpc_listen", "not an IP address"),
    ("[control]\nfee_interval_seconds = 0\n", "control.fee_interval_seconds", "minimum"),
    ("[control]\nnice = 20\n", "control.nice", "outside"),
    ("[control]\nnice = -5\n", "control.nice", "outside"),
    ("[prepaid]\nmax_failed_pins = 0\n", "prepaid.max_failed_pins", "minimum"),
    ("[prepaid]\nlockout_seconds = -1\n", "prepaid.lockout_seconds", "minimum"),
    ("[prepaid]\nmax_call_seconds = 1.5\n", "prepaid.max_call_seconds", "must be an integer"),
    ("clients = 3\n", "clients", "array of tables"),
    ("clients = [1]\n", "clients[0]", "must be a table"),
    ('[[clients]]\nnetwork = "127.0.0.1"\nprofile = "cisco"\n', "clients[0].secret", "is required"),
    ('[[clients]]\nsecret = "x"\nprofile = "cisco"\n', "clients[0].network", "is required"),
    ('[[clients]]\nnetwork = "127.0.0.1"\nsecret = "x"\n', "clients[0].profile", "is required"),
    (GOOD_CLIENT + '[[clients]]\nnetwork = "10.0.0.1"\nsecret = ""\nprofile = "cisco"\n',
     "clients[1].secret", "must not be empty"),
    (GOOD_CLIENT + '[[clients]]\nnetwork = "10.0.0.1"\nsecret = 12\nprofile = "cisco"\n',
     "clients[1].secret", "must be a string"),
    ('[[clients]]\nnetwork = "300.1.1.1"\nsecret = "x"\nprofile = "cisco"\n', "clients[0].network",
     "not an IP address or CIDR"),
    ('[[clients]]\nnetwork = "10.0.0.1/8"\nsecret = "x"\nprofile = "cisco"\n', "clients[0].network",
     "host bits"),
    (GOOD_CLIENT + '[[clients]]\nnetwork = "127.0.0.1/32"\nsecret = "y"\nprofile = "cisco"\n',
     "clients[1].network", "already clients[0]"),
    ('[[clients]]\nname = "gw"\nnetwork = "10.0.0.1"\nsecret = "x"\nprofile = "cisco"\n'
     '[[clients]]\nname = "gw"\nnetwork = "10.0.0.2"\nsecret = "x"\nprofile = "cisco"\n',
     "clients[1].name", "already clients[0]"),
    ('[[clients]]\nnetwork = "10.0.0.1"\nsecret = "x"\nprofile = "nortel"\n', "clients[0].profile",
     "unknown profile 'nortel'"),
    ('[[clients]]\nnetwork = "10.0.0.1"\nsercet = "x"\nprofile = "cisco"\n', "clients[0].sercet",
     "unknown key"),
    ('[[clients]]\nnetwork = "10.0.0.1"\nsecret = "x"\nprofile = "cisco"\n'
     'require_message_authenticator = "yes"\n', "clients[0].require_message_authenticator",
     "true or false"),
    ("[profiles.mine]\npin_only = true\n", "profiles.mine.base", "required for a new profile"),
    ('[profiles.mine]\nbase = "nortel"\n', "profiles.mine.base", "unknown profile 'nortel'"),
    ('[profiles.a]\nbase = "b"\n[profiles.b]\nbase = "a"\n', "profiles.a.base", "cycle: a -> b -> a"),
    ('[profiles.mine]\nbase = "cisco"\nvendor = 7\n', "profiles.mine.vendor", "not 0 (generic)"),
    ('[profiles.mine]\nbase = "cisco"\nnumber_attribute = "To"\n', "profiles.mine.number_attribute",
     "must be one of"),
    ('[profiles.mine]\nbase = "generic"\nsend_credit_time = true\n', "profiles.mine.send_credit_time",
     "vendor 0 sends and reads no VSAs"),
    ('[profiles.mine]\nbase = "cisco"\nrouting_avpair = "r={plan}"\n', "profiles.mine.routing_avpair",
     "only {route}"),
    ('[profiles.mine]\nbase = "cisco"\nrouting_avpair = "r={route"\n', "profiles.mine.routing_avpair",
     "bad template"),
    ('[profiles.mine]\nbase = "cisco"\ncolour = "red"\n', "profiles.mine.colour", "unknown key"),
    ('[profiles.mine]\nbase = "cisco"\nprefixed_values = 1\n', "profiles.mine.prefixed_values",
     "true or false"),
    ('[profiles.mine]\nbase = "cisco"\n[profiles.mine.return_codes]\nbroke = 4\n',
     "profiles.mine.return_codes.broke", "unknown outcome"),
    ('[profiles.mine]\nbase = "cisco"\n[profiles.mine.return_codes]\nsuccess = "0"\n',
     "profiles.mine.return_codes.success", "must be an integer"),
    ('[profiles.cisco.return_codes]\nsuccess = -1\n', "profiles.cisco.return_codes.success", "outside"),
]


@pytest.mark.parametrize("text, where, problem", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_every_error_names_file_and_key(tmp_path, text, where, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}: "), message
    assert problem in message, message


def test_unreadable_and_invalid_toml_name_the_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read"):
        load_config(missing)
    broken = write(tmp_path, "[server\nworkers = 2\n")
    with pytest.raises(ConfigError, match=f"^{broken}: invalid TOML: .*line 1"):
        load_config(broken)


def test_short_secret_is_accepted_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, '[[clients]]\nname = "gw"\nnetwork = "10.0.0.1"\n'
                           'secret = "short"\nprofile = "cisco"\n')
    with caplog.at_level(logging.WARNING, logger="radcore.config"):
        cfg = load_config(path)
    assert cfg.clients[0].secret == b"short"
    assert any("clients[0].secret" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)
    assert "short" not in repr(cfg.clients[0]), "secrets never appear in reprs"


def test_longest_prefix_wins(tmp_path):
    def client(name, network, profile="cisco"):
        return (f'[[clients]]\nname = "{name}"\nnetwork = "{network}"\n'
                f'secret = "secret-of-{name}-0123456"\nprofile = "{profile}"\n')
    path = write(tmp_path, client("wide", "10.0.0.0/8") + client("pop", "10.1.0.0/16", "quintum")
                 + client("gw", "10.1.2.3") + client("v6", "2001:db8::/32", "generic")
                 + client("v6host", "2001:db8::7"))
    cfg = load_config(path)
    name = lambda ip: (cfg.client_for(ip).name if cfg.client_for(ip) else None)  # noqa: E731
    assert name("10.1.2.3") == "gw"
    assert name("10.1.2.4") == "pop"
    assert name("10.200.0.1") == "wide"
    assert name("11.0.0.1") is None
    assert name("2001:db8::1") == "v6"
    assert name("2001:db8::7") == "v6host"
    assert name("2001:db9::1") is None
    assert name("::ffff:10.1.2.4") == "pop", "IPv4-mapped sources match IPv4 clients"
    assert name("not-an-ip") is None
    assert cfg.client_for("10.1.2.4").profile.name == "quintum"
    assert cfg.client_for("10.1.2.4").secret == b"secret-of-pop-0123456"
    # results, misses included, are cached and stay correct
    assert cfg.client_for("11.0.0.1") is None and cfg.client_for("11.0.0.1") is None
    assert cfg.client_for("10.1.2.3") is cfg.client_for("10.1.2.3")


def test_builtin_profiles():
    cisco, quintum, generic = (BUILTIN_PROFILES[n] for n in ("cisco", "quintum", "generic"))
    assert (cisco.vendor, cisco.prefixed_values, cisco.send_credit_time, cisco.send_session_timeout) == \
        (9, True, True, True)
    assert dict(cisco.return_codes) == {m.name.lower(): int(m) for m in ReturnCode}
    assert (quintum.vendor, quintum.prefixed_values) == (6618, False)
    assert quintum.return_codes["insufficient_balance"] == 11
    assert {k: v for k, v in quintum.return_codes.items() if k != "insufficient_balance"} == \
        {k: v for k, v in cisco.return_codes.items() if k != "insufficient_balance"}
    assert generic.vendor == 0 and not generic.send_credit_time and generic.send_session_timeout
    assert set(cisco.return_codes) == set(OUTCOMES)


def test_profile_overrides(tmp_path):
    path = write(tmp_path, """
[profiles.cisco.return_codes]
insufficient_balance = 99

[profiles.tenor]
base = "quintum"
prefixed_values = true
pin_only = true
strip_plus = true
strip_00 = true
tech_prefix = "0101#"
number_attribute = "h323-redirect-number"
routing_avpair = "route={route}"
send_session_timeout = false

[profiles.tenor.return_codes]
card_expired = 42

[profiles.tenor-v2]
base = "tenor"
[profiles.tenor-v2.return_codes]
card_expired = 43

[profiles.mycisco]
base = "cisco"

[[clients]]
network = "10.0.0.1"
secret = "0123456789abcdef"
profile = "tenor-v2"
require_message_authenticator = false
""")
    cfg = load_config(path)
    assert cfg.profiles["cisco"].return_codes["insufficient_balance"] == 99
    assert cfg.profiles["mycisco"].return_codes["insufficient_balance"] == 99, "base sees the modified cisco"
    assert BUILTIN_PROFILES["cisco"].return_codes["insufficient_balance"] == 12, "built-ins untouched"
    tenor = cfg.profiles["tenor"]
    assert (tenor.name, tenor.vendor, tenor.prefixed_values, tenor.pin_only) == ("tenor", 6618, True, True)
    assert (tenor.strip_plus, tenor.strip_00, tenor.tech_prefix) == (True, True, "0101#")
    assert tenor.number_attribute == "h323-redirect-number" and tenor.routing_avpair == "route={route}"
    assert not tenor.send_session_timeout and tenor.send_credit_time
    assert tenor.return_codes["card_expired"] == 42 and tenor.return_codes["insufficient_balance"] == 11
    v2 = cfg.profiles["tenor-v2"]
    assert v2.return_codes["card_expired"] == 43 and v2.pin_only and v2.name == "tenor-v2"
    client = cfg.client_for("10.0.0.1")
    assert client.profile is v2 and client.require_message_authenticator is False
    with pytest.raises(TypeError):
        v2.return_codes["card_expired"] = 1  # profiles are read-only


def test_with_clients_of_keeps_listeners(tmp_path):
    first = load_config(write(tmp_path, '[server]\nworkers = 3\n' + GOOD_CLIENT))
    other_client = GOOD_CLIENT.replace("127.0.0.1", "10.9.9.9")
    second = load_config(write(tmp_path, '[server]\nworkers = 9\n' + other_client, name="other.toml"))
    merged = first.with_clients_of(second)
    assert isinstance(merged, Config)
    assert merged.server.workers == 3 and merged.path == first.path
    assert merged.client_for("10.9.9.9") is not None and merged.client_for("127.0.0.1") is None
    assert first.client_for("127.0.0.1") is not None


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:1812", ("127.0.0.1", 1812)), ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:1813", ("::1", 1813)), ("[::]:9812", ("::", 9812)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", ":1812", "127.0.0.1", "127.0.0.1:", "127.0.0.1:-1", "[::1]1812",
                                  "host:1812", "127.0.0.1:99999"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)
