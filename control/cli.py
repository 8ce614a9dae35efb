"""`radcore`: the one command an operator types.

    radcore serve --config radcore.toml      RADIUS workers + control plane (gRPC, fees, portal)
    radcore admin ...                        manage series, cards, rates, fees over gRPC
    radcore keys rotate|reencrypt|prune      the PIN encryption keys (on the server, no API)
    radcore --version

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input (one readable line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import radcore
from radcore import fastpath
from radcore.config_file import load_config
from radcore.errors import ConfigError, RadcoreError

SERVE_HELP = """\
Start radcore: N RADIUS worker processes sharing the auth and accounting ports
(SO_REUSEPORT), plus the control process (gRPC API, fee scheduler, card-holder portal).
Everything shares one LMDB store in the configured data directory.

Signals: SIGTERM/SIGINT finish the batch in hand and stop; SIGHUP reloads the [[clients]]
list (gateways and their secrets) without dropping a packet.

Quick check once it runs (Status-Server, RFC 5997):
  echo 'Message-Authenticator = 0x00' | radclient -x 127.0.0.1:1812 status SECRET
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ConfigError, RadcoreError) as exc:
        print(f"radcore: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radcore", description="Prepaid calling-card RADIUS server for VoIP carriers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'radcore COMMAND --help' for the options of each command.")
    parser.add_argument("--version", action="version",
                        version=f"radcore {radcore.__version__} ({fastpath.IMPLEMENTATION} codec)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the RADIUS server and the control plane",
                                description=SERVE_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", "-c", default="radcore.toml", metavar="FILE",
                       help="TOML configuration (default: %(default)s; see examples/radcore.toml)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="RADIUS worker processes (default: server.workers, 0 = one per CPU)")
    serve.add_argument("--demo", action="store_true",
                       help="create a demo rate table and series 45 if missing, and print how to call")
    serve.add_argument("--no-control", action="store_true",
                       help="RADIUS only: do not start the gRPC API, fee scheduler and portal")
    serve.add_argument("--ready-file", metavar="FILE",
                       help="write the bound ports as JSON here once serving (for scripts and tests)")
    serve.set_defaults(func=cmd_serve)

    from control import keys_cli
    keys_cli.add_commands(commands)

    from control import admin
    admin.add_commands(commands)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from control.process import control_process
    from radcore.handler import make_handler
    from radcore.supervisor import serve

    config = load_config(args.config)
    logging.basicConfig(format="%(asctime)s %(levelname)s radcore[%(process)d] %(name)s: %(message)s")
    logging.getLogger().setLevel(config.server.log_level.upper())
    if args.demo:
        print(_provision_demo(config), flush=True)
    extra = () if args.no_control else (control_process(config, args.ready_file),)
    try:
        return serve(config, make_handler, workers=args.workers, extra_processes=extra,
                     ready_file=args.ready_file)
    except OSError as exc:
        print(f"radcore: cannot start: {exc}", file=sys.stderr)
        return 1


def _provision_demo(config) -> str:
    """Runs before any fork; the store is closed again so no LMDB environment crosses the fork."""
    from control.demo import ensure_demo, try_it
    from radcore.clock import default_clock
    from radcore.keys import KeyRing
    from radcore.store import Store

    store = Store(config.server.data_dir, map_size=config.server.map_size_mb << 20)
    try:
        card = ensure_demo(store, KeyRing.load_or_create(config.control.key_file), default_clock())
    finally:
        store.close()
    client = config.clients[0] if config.clients else None
    secret = client.secret.decode() if client else "SECRET"
    text = f"Demo card {card.number}, PIN {card.pin} (10.00 USD).\n" + try_it(
        card, config.server.auth_listen, secret)
    return text.replace("CONFIG", config.path)


if __name__ == "__main__":
    sys.exit(main())
