"""Test helpers for the RADIUS server: a real server subprocess, a UDP client, /metrics scraping.

Every server a test starts is a `ServerProcess` context manager: it is stopped by PID on exit,
also when the test fails, and its log is kept so an assertion can show it. Ports are always 0 in
the config; the real ones come from the server's ready file.

`implementation="py"` starts the server with RADCORE_NO_EXTENSIONS=1 (the reference codec);
`"cy"` requires the Cython extension and checks the server really picked it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from radcore import dictionary as d
from radcore import packet

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SECRET = "radcore-test-secret-0123456789"

def have_extension() -> bool:
    return importlib.util.find_spec("radcore._fastpath") is not None


def implementation_params() -> list:
    """pytest params "py" and "cy"; "cy" is skipped without the extension unless it is required."""
    import pytest

    cy_missing = not have_extension() and not os.environ.get("RADCORE_REQUIRE_EXTENSIONS")
    reason = "radcore._fastpath is not built (set RADCORE_REQUIRE_EXTENSIONS to fail instead)"
    return ["py", pytest.param("cy", marks=pytest.mark.skipif(cy_missing, reason=reason))]


def server_command() -> list[str]:
    return [sys.executable, "-m", "radcore.supervisor"]


def write_config(directory: Path, *, clients: list[dict] | None = None, workers: int = 2,
                 extra: str = "", name: str = "radcore.toml") -> Path:
    """A config on loopback with every port 0; `clients` defaults to 127.0.0.1 with `SECRET`."""
    if clients is None:
        clients = [{"name": "loopback", "network": "127.0.0.1", "secret": SECRET, "profile": "cisco"}]
    lines = ["[server]", 'data_dir = "var"', f"workers = {workers}",
             'auth_listen = "127.0.0.1:0"', 'acct_listen = "127.0.0.1:0"',
             'metrics_listen = "127.0.0.1:0"', "duplicate_cache_seconds = 30", 'log_level = "debug"',
             "", "[control]", 'grpc_listen = "127.0.0.1:0"', 'portal_listen = "127.0.0.1:0"', "", extra]
    for client in clients:
        lines.append("[[clients]]")
        for key, value in client.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


class ServerProcess:
    """`python -m radcore.supervisor` in a subprocess; use as a context manager."""

    def __init__(self, config: Path, *, handler: str | None = None, env: dict | None = None,
                 implementation: str | None = None, command: list[str] | None = None):
        self.config = Path(config)
        self.ready_file = self.config.parent / "ready.json"
        self.log_path = self.config.parent / "server.log"
        args = (command or server_command()) + ["--config", str(self.config),
                                                "--ready-file", str(self.ready_file)]
        if handler:
            args += ["--handler", handler]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(TESTS)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
        full_env.pop("RADCORE_NO_EXTENSIONS", None)
        if implementation == "py":
            full_env["RADCORE_NO_EXTENSIONS"] = "1"
        elif implementation == "cy":
            full_env["RADCORE_REQUIRE_EXTENSIONS"] = "1"
        self.implementation = {"py": "python", "cy": "cython"}.get(implementation or "")
        full_env.update(env or {})
        if self.ready_file.exists():
            self.ready_file.unlink()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=str(self.config.parent))
        self.pid = self.proc.pid
        self.ready: dict = {}

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def wait_ready(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.ready = json.loads(self.ready_file.read_text())
                if self.implementation:
                    assert self.ready["implementation"] == self.implementation, self.ready
                return self.ready
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    @property
    def auth_port(self) -> int:
        return self.ready["auth_port"]

    @property
    def acct_port(self) -> int:
        return self.ready["acct_port"]

    @property
    def metrics_port(self) -> int:
        return self.ready["metrics_port"]

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Stop by PID no matter what: SIGTERM, then SIGKILL; its workers notice the parent is gone."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            self._log.close()

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def wait_metric(self, name: str, minimum: float, timeout: float = 10.0, **labels: str) -> float:
        """Poll /metrics until `name{labels}` reaches `minimum` (workers publish once per batch)."""
        key = metric_key(name, **labels)
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            value = self.metrics().get(key, 0.0)
            if value >= minimum:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{key} stayed at {value}, expected >= {minimum}\n{self.log()}")


def metric_key(name: str, **labels: str) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def scrape(port: int) -> dict[str, float]:
    """GET /metrics and flatten it to {'name{label="v"}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[metric_key(sample.name, **sample.labels)] = sample.value
    return out


class UdpClient:
    """A NAS stand-in: one UDP socket on a fixed source port, so retransmissions look real."""

    def __init__(self, source: str = "127.0.0.1", server: str = "127.0.0.1"):
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))

    def __enter__(self) -> UdpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, port: int, data: bytes) -> None:
        self.sock.sendto(data, (self.server, port))

    def recv(self, timeout: float = 3.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096)
        except TimeoutError:
            return None

    def exchange(self, port: int, data: bytes, timeout: float = 3.0) -> bytes | None:
        self.send(port, data)
        return self.recv(timeout)


@contextlib.contextmanager
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server, nas): a non-blocking server socket on a free loopback port, as a worker's, and a NAS
    socket to send to it from; both closed afterwards. For driving radcore._lane.Lane directly."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        yield server, nas
    finally:
        server.close()
        nas.close()


# ---------------------------------------------------------------------------------------------
# Packets (client side, built with the reference codec)


def status_server(identifier: int = 1, secret: str = SECRET, authenticator: bytes | None = None) -> bytes:
    return packet.encode_access_request(identifier, authenticator or os.urandom(16), [],
                                        secret.encode(), code=d.Code.STATUS_SERVER)


def access_request(identifier: int = 2, secret: str = SECRET, *, authenticator: bytes | None = None,
                   user: str = "45-001122333", password: bytes = b"12345678",
                   message_authenticator: bool = True) -> tuple[bytes, bytes]:
    """(datagram, request authenticator) of an Access-Request with User-Name and User-Password."""
    auth = authenticator or os.urandom(16)
    data = packet.encode_access_request(identifier, auth, [(d.USER_NAME, user.encode())], secret.encode(),
                                        password=password, message_authenticator=message_authenticator)
    return data, auth


def accounting_request(identifier: int = 3, secret: str = SECRET, session: str = "call-1",
                       status: int = d.AcctStatus.START) -> bytes:
    attrs = [(d.ACCT_STATUS_TYPE, int(status).to_bytes(4, "big")), (d.ACCT_SESSION_ID, session.encode()),
             (d.NAS_IDENTIFIER, b"gw1")]
    return packet.encode_accounting_request(identifier, attrs, secret.encode())


# ---------------------------------------------------------------------------------------------
# A handler for server subprocesses (`--handler helpers_server:recording_handler`)


class RecordingHandler:
    """Answers everything and appends one line per handled request to $RADCORE_TEST_HANDLER_LOG,
    so a test can prove a retransmission never reached the handler."""

    def __init__(self, config):
        self.path = os.environ["RADCORE_TEST_HANDLER_LOG"]

    def handle(self, batch):
        out = []
        lines = []
        for req, client, _ in batch:
            lines.append(f"{req.code} {req.identifier} {req.authenticator.hex()} {client.name}\n")
            if req.code == d.Code.ACCESS_REQUEST:
                out.append((d.Code.ACCESS_ACCEPT, [(d.REPLY_MESSAGE, b"recorded " + req.user_name.encode())]))
            else:
                out.append((d.Code.ACCOUNTING_RESPONSE, []))
        with open(self.path, "a") as f:
            f.write("".join(lines))
        return out


def recording_handler(config):
    return RecordingHandler(config)


def handled_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
