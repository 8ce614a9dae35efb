"""The control plane's gRPC server: servicers, the authorization interceptor, health, reflection, TLS.

`create_server` builds and binds but does not start, so the caller (the control process, a test)
decides when to serve and owns shutdown. Without TLS the server refuses any address that is not
loopback: bearer tokens in cleartext on a network are credentials for anyone on the path.

Health (grpc.health.v1) and reflection answer without a token (the interceptor lets them through) so
load balancers and grpcurl work; every radcore service reports SERVING until `graceful_shutdown`
flips them to NOT_SERVING before the listener stops.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control.auth import AuthInterceptor
from control.service import App, add_services
from radcore.clock import Clock, system_clock
from radcore.config import ControlConfig, PrepaidConfig
from radcore.errors import ConfigError
from radcore.keys import KeyRing
from radcore.store import Store

#: Rate decks arrive in one ImportRates message; 64 MiB is ~1.5 million CSV lines.
MAX_MESSAGE_BYTES = 64 << 20
DEFAULT_WORKERS = 16


class ControlServer(grpc.Server):
    """A grpc.Server that also holds its health servicer, so shutdown can announce itself first."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer):
        self._server = server
        self.health = health_servicer

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float | None) -> Any:
        return self._server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1, localhost and unix sockets; host names are not resolved."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials(config: ControlConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert and not config.tls_key:
        return None
    if not config.tls_cert or not config.tls_key:
        raise ConfigError("control.tls_cert and control.tls_key must be set together")
    pair = []
    for key, path in (("control.tls_key", config.tls_key), ("control.tls_cert", config.tls_cert)):
        try:
            with open(path, "rb") as f:
                pair.append(f.read())
        except OSError as e:
            raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from e
    return grpc.ssl_server_credentials([(pair[0], pair[1])])


def configure_maintenance(server: grpc.Server, services: Sequence[str]) -> health.HealthServicer:
    """Health checking (overall "" and each service SERVING) and server reflection."""
    servicer = health.HealthServicer(experimental_non_blocking=True,
                                     experimental_thread_pool=ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", *services):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    names = (*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    return servicer


def create_server(store: Store, keyring: KeyRing, config_control: ControlConfig, *,
                  address: str | None = None, clock: Clock = system_clock,
                  prepaid: PrepaidConfig | None = None,
                  max_workers: int = DEFAULT_WORKERS) -> tuple[ControlServer, int]:
    """Build the server bound to `address` (default `config_control.grpc_listen`); returns
    (server, bound port). Call `.start()` to serve and `graceful_shutdown()` to stop.

    `prepaid` supplies session retention for ReleaseSession (the RADIUS settings); `clock` is
    injectable so tests can move time under fee runs and quotes.
    """
    address = address or config_control.grpc_listen
    credentials = _credentials(config_control)
    if credentials is None and not is_loopback(address):
        raise ConfigError(f"control.grpc_listen {address!r} is not a loopback address and TLS is off: "
                          "set control.tls_cert and control.tls_key, or listen on 127.0.0.1")
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="radcore-grpc"),
        interceptors=[AuthInterceptor(store)],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)])
    services = add_services(server, App(store, keyring, clock, prepaid))
    servicer = configure_maintenance(server, services)
    try:
        port = (server.add_secure_port(address, credentials) if credentials
                else server.add_insecure_port(address))
    except RuntimeError as e:
        raise ConfigError(f"control.grpc_listen: cannot bind {address}: {e}") from e
    if not port:
        raise ConfigError(f"control.grpc_listen: cannot bind {address}")
    return ControlServer(server, servicer), port


def graceful_shutdown(server: ControlServer, grace: float = 5.0) -> None:
    """Report NOT_SERVING, stop accepting calls, let running ones finish for `grace` seconds.

    Call it from the SIGTERM handler of the control process. A CreateSeries cut off by the grace
    period rolls back; a cut-off fee run is simply resumed by the next scheduled run.
    """
    server.health.enter_graceful_shutdown()
    server.stop(grace).wait()
