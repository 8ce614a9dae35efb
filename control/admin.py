"""`radcore admin`: the operator's gRPC client, and the plumbing every admin command shares.

    radcore admin series create|list|show|edit|status        control/admin_series.py
    radcore admin cards list|show|adjust|block|unblock|...   control/admin_cards.py
    radcore admin rates tables|create-table|list|put|...     control/admin_rates.py
    radcore admin taxes|routes|resellers ...                 control/admin_catalog.py
    radcore admin fees|sessions|audit|token ...              control/admin_ops.py
    amounts, dates, enum labels, --json shape                control/admin_values.py

This module holds what they have in common: the argument parser conventions (connection options on
every command, one-line usage errors), the connection (`Context`: channel, bearer metadata,
deadlines), the one mapping from gRPC status codes to exit codes, and the output helpers (rich
tables for people, `--json` for scripts, progress bars on stderr).

Exit codes: 0 success; 2 bad input, whether argparse, our own parsing or the server said so
(INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, PERMISSION_DENIED,
UNAUTHENTICATED), with the one line of the server's message; 1 when the server cannot be reached or
fails. Expected errors never print a traceback. The token is never printed.

Money on the wire is integer micro-units. Amounts typed by people are parsed with `decimal.Decimal`
and converted exactly (at most 6 decimal places, never a float). Tables show balances the way the
switch announces them (`format_amount`: two places, rounded down) and prices exactly; `--json`
gives every amount twice: `<field>_micro` (integer) and `<field>` (exact decimal string).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Self

import grpc

from control import admin_values as v
from control._proto.radcore.v1 import radcore_pb2 as pb
from control._proto.radcore.v1 import radcore_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
#: Same ceiling as the server's receive limit: a rate deck travels in one ImportRates message.
MAX_MESSAGE_BYTES = 64 << 20
#: Largest page the server returns; listings follow next_page_token up to --limit.
MAX_PAGE = 1000

#: Server answers that mean "your input is wrong": exit 2 with the server's message.
INPUT_ERRORS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE,
})

CONNECTION_HELP = """\
connection: --server (or RADCORE_SERVER, default 127.0.0.1:50051) and --token (or RADCORE_TOKEN).
Without --tls-ca the connection is plaintext: use it on 127.0.0.1 or through an SSH tunnel only.
Exit codes: 0 ok, 2 bad input (one line on stderr), 1 server unreachable or failing."""


class UsageError(Exception):
    """Bad input found by the client: exit 2 with this one line."""


class Failure(Exception):
    """Something outside the user's input failed (file system, store): exit 1 with this one line."""


# --- parser -----------------------------------------------------------------------------------------

class AdminParser(argparse.ArgumentParser):
    """argparse with one-line errors: `radcore admin cards adjust: error: ... (see --help)`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)


def _common_options() -> argparse.ArgumentParser:
    """Connection and output options, accepted before or after the command words.

    Every default is SUPPRESS, so an option given at `radcore admin --server X ...` is not overwritten
    by the sub-command's parser; `Context` applies the real defaults.
    """
    common = AdminParser(add_help=False)
    group = common.add_argument_group("connection and output")
    s = argparse.SUPPRESS
    group.add_argument("--server", metavar="HOST:PORT", default=s,
                       help=f"radcore control plane (default: $RADCORE_SERVER or {DEFAULT_SERVER})")
    group.add_argument("--token", metavar="TOKEN", default=s,
                       help="bearer token (default: $RADCORE_TOKEN); prefer the variable, command "
                            "lines are visible to other users in ps")
    group.add_argument("--tls-ca", metavar="FILE", default=s,
                       help="PEM CA bundle: connect with TLS and verify the server against it")
    group.add_argument("--tls-server-name", metavar="NAME", default=s,
                       help="name to verify in the server certificate (when --server is an IP)")
    group.add_argument("--timeout", metavar="SECONDS", type=v.positive_float, default=s,
                       help=f"deadline per request (default {DEFAULT_TIMEOUT:g}; streams such as "
                            "series create, export and fee runs have none unless given)")
    group.add_argument("--json", action="store_true", default=s,
                       help="print machine-readable JSON on stdout instead of tables")
    return common


_COMMON: list[argparse.ArgumentParser] = []


def common() -> list[argparse.ArgumentParser]:
    """`parents=` for every admin parser (built once, on first use)."""
    if not _COMMON:
        _COMMON.append(_common_options())
    return _COMMON


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Attach `radcore admin ...` to the top-level parser (called by control/cli.py)."""
    from control import admin_cards, admin_catalog, admin_ops, admin_rates, admin_series

    admin = subparsers.add_parser(
        "admin", help="manage series, cards, rates, fees, tokens over gRPC", parents=common(),
        formatter_class=Formatter,
        description="Manage a running radcore over its gRPC control plane.\n\n" + CONNECTION_HELP,
        epilog="""examples:
  export RADCORE_TOKEN=$(radcore admin token create --local --config radcore.toml --role admin)
  radcore admin series list
  radcore admin cards list --series 45 --status activated --min-balance 1.00
  radcore admin --server 10.0.0.5:50051 --tls-ca ca.pem fees run --apply

Run 'radcore admin GROUP --help' and 'radcore admin GROUP COMMAND --help' for details.""")
    admin.error = AdminParser.error.__get__(admin)  # type: ignore[method-assign]  # one-line errors here too
    groups = admin.add_subparsers(title="groups", metavar="GROUP", dest="admin_group", required=True,
                                  parser_class=AdminParser)
    for module in (admin_series, admin_cards, admin_rates, admin_catalog, admin_ops):
        module.register(groups)


def add_group(groups: argparse._SubParsersAction, name: str, help: str,
              description: str = "") -> argparse._SubParsersAction:
    parser = groups.add_parser(name, help=help, description=_wrap(description or help), parents=common(),
                               formatter_class=Formatter)
    return parser.add_subparsers(title="commands", metavar="COMMAND", dest="admin_command",
                                 required=True, parser_class=AdminParser)


def add_command(commands: argparse._SubParsersAction, name: str,
                handler: Callable[[Context, argparse.Namespace], int | None], help: str, *,
                description: str = "", examples: str = "") -> argparse.ArgumentParser:
    """A leaf command; `handler(ctx, args)` runs under `run`, which owns exit codes."""
    epilog = ("examples:\n" + examples.rstrip() + "\n\n" if examples else "") + CONNECTION_HELP
    parser = commands.add_parser(name, help=help, description=_wrap(description or help), epilog=epilog,
                                 parents=common(), formatter_class=Formatter)
    parser.set_defaults(func=lambda args: run(handler, args))
    return parser


def _wrap(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=96)


def run(handler: Callable[[Context, argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one command and turn every expected failure into its exit code and one stderr line."""
    ctx = Context(args)
    try:
        return handler(ctx, args) or 0
    except grpc.RpcError as e:
        return ctx.report_rpc_error(e)
    except UsageError as e:
        return _fail(str(e), 2)
    except Failure as e:
        return _fail(str(e), 1)
    finally:
        ctx.close()


def _fail(message: str, code: int) -> int:
    line = " ".join(message.split())  # one line, whatever the server sent
    print(f"radcore: {line}", file=sys.stderr)
    return code


# --- connection -------------------------------------------------------------------------------------

class _Service:
    """A generated stub whose methods add the bearer metadata and the deadline."""

    def __init__(self, ctx: Context, name: str):
        self._ctx = ctx
        self._stub = getattr(pb_grpc, f"{name}Stub")(ctx.channel())
        self._methods = pb.DESCRIPTOR.services_by_name[name].methods_by_name

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        method = getattr(self._stub, name)
        streaming = self._methods[name].server_streaming
        ctx = self._ctx

        def invoke(request: Any) -> Any:
            timeout = ctx.timeout if streaming else (ctx.timeout or DEFAULT_TIMEOUT)
            return method(request, metadata=ctx.metadata(), timeout=timeout)

        return invoke


class Context:
    """One command's connection settings, lazily opened channel and output consoles."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.json: bool = bool(getattr(args, "json", False))
        self.server: str = (getattr(args, "server", None) or os.environ.get("RADCORE_SERVER")
                            or DEFAULT_SERVER)
        self.timeout: float | None = getattr(args, "timeout", None)
        self._token: str = getattr(args, "token", None) or os.environ.get("RADCORE_TOKEN", "")
        self._channel: grpc.Channel | None = None
        self._console: Any = None
        self._err_console: Any = None

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
            ca_path = getattr(self.args, "tls_ca", None)
            if ca_path:
                try:
                    with open(ca_path, "rb") as f:
                        ca = f.read()
                except OSError as e:
                    raise UsageError(f"--tls-ca: cannot read {ca_path}: {e.strerror}") from None
                name = getattr(self.args, "tls_server_name", None)
                if name:
                    options.append(("grpc.ssl_target_name_override", name))
                self._channel = grpc.secure_channel(
                    self.server, grpc.ssl_channel_credentials(root_certificates=ca), options=options)
            else:
                self._channel = grpc.insecure_channel(self.server, options=options)
        return self._channel

    def service(self, name: str) -> Any:
        """`ctx.service("SeriesService").GetSeries(request)`."""
        return _Service(self, name)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self._token}")] if self._token else []

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def report_rpc_error(self, e: grpc.RpcError) -> int:
        code, details = e.code(), e.details() or ""
        if code in INPUT_ERRORS:
            if code == grpc.StatusCode.UNAUTHENTICATED and not self._token:
                details += " (give --token or set RADCORE_TOKEN; bootstrap one with " \
                           "'radcore admin token create --local --role admin')"
            return _fail(details or code.name.lower(), 2)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return _fail(f"no answer from radcore at {self.server} within the deadline "
                         "(raise --timeout)", 1)
        if code == grpc.StatusCode.UNAVAILABLE and _transport_failure(details):
            return _fail(f"cannot reach radcore at {self.server}: {details}", 1)
        if code == grpc.StatusCode.CANCELLED:
            return _fail("cancelled", 1)
        return _fail(f"radcore at {self.server} failed ({code.name}): {details}", 1)

    # -- output ---------------------------------------------------------------------------------

    @property
    def console(self) -> Any:
        if self._console is None:
            self._console = _console(stderr=False)
        return self._console

    @property
    def err_console(self) -> Any:
        if self._err_console is None:
            self._err_console = _console(stderr=True)
        return self._err_console

    def note(self, text: str) -> None:
        """A remark for people on stderr (never mixed into --json output)."""
        print(text, file=sys.stderr)


_TRANSPORT_WORDS = ("failed to connect", "connection refused", "connect failed", "dns", "resolve",
                    "socket closed", "connection reset", "handshake", "ssl", "tls", "unreachable",
                    "no route", "empty address list", "timeout", "timed out", "connection")


def _transport_failure(details: str) -> bool:
    """UNAVAILABLE from the transport (nobody answered) rather than from radcore's storage layer."""
    low = details.lower()
    return not details or any(word in low for word in _TRANSPORT_WORDS)


def _console(*, stderr: bool) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:  # piped or redirected: no wrapping at 80 columns
        console = Console(stderr=stderr, highlight=False, width=max(console.width, 160))
    return console


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def table(ctx: Context, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str = "",
          caption: str = "", right: Sequence[str] = ()) -> None:
    """A rich table on stdout; every cell is plain text (names like "[red]" are not markup)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title or None, caption=caption or None, title_justify="left",
              caption_justify="left", header_style="bold")
    for name in columns:
        t.add_column(name, justify="right" if name in right else "left", overflow="fold")
    for row in rows:
        t.add_row(*(Text("" if v is None else str(v)) for v in row))
    ctx.console.print(t)


def fields(ctx: Context, pairs: Iterable[tuple[str, Any]], *, title: str = "") -> None:
    """One object as a two-column table (the `show` commands)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title or None, title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for key, value in pairs:
        t.add_row(Text(key), Text("" if value is None else str(value)))
    ctx.console.print(t)


class ProgressBar:
    """A progress bar on stderr that appears with the first update, so an error answered before any
    progress stays a single line. Silent with --json."""

    def __init__(self, ctx: Context, description: str, *, unit: str = ""):
        self.ctx, self.description, self.unit = ctx, description, unit
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        return self

    def update(self, done: int, total: int | None = None, description: str | None = None) -> None:
        if self.ctx.json:
            return
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=self.ctx.err_console)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=total)
        changes: dict[str, Any] = {"completed": done}
        if total is not None:
            changes["total"] = total
        if description is not None:
            changes["description"] = description
        self._bar.update(self._task, **changes)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- listings ----------------------------------------------------------------------------------------

def collect(fetch: Callable[[int, str], Any], items: str, limit: int) -> tuple[list[Any], bool]:
    """Follow next_page_token until `limit` items (0 = all); returns (items, more_exist)."""
    out: list[Any] = []
    token = ""
    while True:
        want = MAX_PAGE if not limit else min(MAX_PAGE, limit - len(out))
        response = fetch(want, token)
        out.extend(getattr(response, items))
        token = response.next_page_token
        if not token or (limit and len(out) >= limit):
            break
    return out, bool(token)


def add_limit(parser: argparse.ArgumentParser, default: int, noun: str) -> None:
    parser.add_argument("--limit", type=v.uint, default=default, metavar="N",
                        help=f"show at most N {noun} (default {default}; 0 = all)")


def stream(call: Any) -> Iterator[Any]:
    """Iterate a server stream; leaving early (error, Ctrl-C) cancels it, which makes the server roll
    back a half-created series or stop an export."""
    try:
        yield from call
    finally:
        call.cancel()
