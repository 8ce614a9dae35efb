"""FreeRADIUS `radclient` against the running server: an independent implementation checks our
Response Authenticators and Message-Authenticators.

Skipped only when radclient is missing and RADCORE_REQUIRE_INTEROP is unset; with it set, a
missing radclient fails the test (CI installs freeradius-utils).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import helpers_server as hs
import pytest

RADCLIENT = shutil.which("radclient")


@pytest.fixture(scope="module")
def radclient():
    if RADCLIENT is None:
        if os.environ.get("RADCORE_REQUIRE_INTEROP"):
            pytest.fail("radclient not found but RADCORE_REQUIRE_INTEROP is set "
                        "(apt-get install freeradius-utils)")
        pytest.skip("radclient not found (apt-get install freeradius-utils); "
                    "set RADCORE_REQUIRE_INTEROP=1 to make this a failure")
    return RADCLIENT


@pytest.fixture(scope="module", params=hs.implementation_params())
def server(request, tmp_path_factory):
    config = hs.write_config(tmp_path_factory.mktemp(f"interop-{request.param}"))
    with hs.ServerProcess(config, implementation=request.param) as proc:
        yield proc


def run_radclient(radclient: str, port: int, command: str, attributes: str,
                  secret: str = hs.SECRET, wait: int = 3) -> subprocess.CompletedProcess:
    # -x: print the packets; -r 1: no retries; -t: seconds to wait for the reply.
    args = [radclient, "-x", "-r", "1", "-t", str(wait), f"127.0.0.1:{port}", command, secret]
    return subprocess.run(args,
                          input=attributes + "\n", capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("port_name, reply", [("auth_port", "Access-Accept"),
                                              ("acct_port", "Accounting-Response")])
def test_status_server_is_answered(radclient, server, port_name, reply):
    result = run_radclient(radclient, getattr(server, port_name), "status", "Message-Authenticator = 0x00")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + server.log()
    assert f"Received {reply}" in output, output
    assert "Message-Authenticator = 0x" in output.split(f"Received {reply}", 1)[1]


def test_access_request_gets_access_reject(radclient, server):
    result = run_radclient(radclient, server.auth_port, "auth",
                           'User-Name = "45-001122333", User-Password = "12345678", '
                           "Message-Authenticator = 0x00")
    output = result.stdout + result.stderr
    assert "Received Access-Reject" in output, output + server.log()
    received = output.split("Received Access-Reject", 1)[1]
    assert 'Reply-Message = "no card store configured"' in received
    assert "Message-Authenticator = 0x" in received


def test_wrong_secret_gets_no_answer(radclient, server):
    key = hs.metric_key("radcore_dropped_total", reason="bad_message_authenticator")
    before = server.metrics().get(key, 0)
    result = run_radclient(radclient, server.auth_port, "status", "Message-Authenticator = 0x00",
                           secret="not-the-shared-secret", wait=1)
    assert "Received" not in result.stdout, result.stdout
    assert result.returncode != 0
    server.wait_metric("radcore_dropped_total", before + 1, reason="bad_message_authenticator")
