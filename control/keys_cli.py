"""`radcore keys rotate|reencrypt|prune`: the PIN encryption keys, handled on the server itself.

These commands open the key file and the data directory named by --config directly, with no API in
between (see control.key_rotation for why). Bad input (a missing config or key file, a prune that
would orphan PINs) is one line on stderr and exit code 2, through `control.cli.main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from radcore.config_file import load_config

KEYS_HELP = """\
The key file (control.key_file, default <data_dir>/radcore.key) holds the pepper of the PIN
digests and the AES-GCM keys that encrypt PINs. Each stored PIN names the key it is encrypted
under. These commands run on the server, against the files named by --config, and each is
recorded in the audit log (actor "local"). A running radcore picks the changes up by itself.

After a suspected compromise of a key:
  radcore keys rotate --config radcore.toml      # a new key becomes current
  radcore keys reencrypt --config radcore.toml   # every stored PIN moves to it
  radcore keys prune --config radcore.toml       # the old keys leave the file
"""


def add_commands(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="the PIN encryption keys on this server: rotate, reencrypt, prune",
                               description=KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = keys.add_subparsers(title="commands", metavar="COMMAND")
    for name, func, text in (
        ("rotate", cmd_rotate, "make a new key current; new PINs use it, stored PINs keep theirs"),
        ("reencrypt", cmd_reencrypt, "re-encrypt every stored PIN under the current key (resumable)"),
        ("prune", cmd_prune, "delete the keys no stored PIN uses any more (after reencrypt)"),
    ):
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.\n\n{KEYS_HELP}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", "-c", default="radcore.toml", metavar="FILE",
                       help="TOML configuration naming the data directory and key file (default: %(default)s)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(func=func)


@contextmanager
def _opened(args: argparse.Namespace) -> Iterator[tuple]:
    from radcore.keys import KeyRing
    from radcore.store import Store

    config = load_config(args.config)
    keyring = KeyRing.load(config.control.key_file)
    store = Store(config.server.data_dir, map_size=config.server.map_size_mb << 20)
    try:
        yield store, keyring
    finally:
        store.close()


def _report(args: argparse.Namespace, doc: dict, text: str) -> int:
    print(json.dumps(doc) if args.json else text)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from control.key_rotation import rotate_pin_key
    from radcore.clock import default_clock

    with _opened(args) as (store, keyring):
        previous, current = rotate_pin_key(store, keyring, clock=default_clock())
    return _report(args, {"key_file": keyring.path, "previous_key": previous, "current_key": current},
                   f"PIN key {current} is now current in {keyring.path}; key {previous} and earlier stay "
                   "for the PINs encrypted under them.")


def cmd_reencrypt(args: argparse.Namespace) -> int:
    from control.key_rotation import reencrypt_pins
    from radcore.clock import default_clock

    progress = _progress(args)
    with _opened(args) as (store, keyring):
        done = reencrypt_pins(store, keyring, clock=default_clock(), progress=progress)
    if progress is not None:
        print(file=sys.stderr)
    return _report(args, {"key_file": keyring.path, "current_key": done.current_key, "cards": done.scanned,
                          "reencrypted": done.reencrypted},
                   f"Re-encrypted {done.reencrypted:,} of {done.scanned:,} PINs under key {done.current_key}.")


def cmd_prune(args: argparse.Namespace) -> int:
    from control.key_rotation import prune_keys
    from radcore.clock import default_clock

    with _opened(args) as (store, keyring):
        dropped = prune_keys(store, keyring, clock=default_clock())
    text = (f"Deleted key(s) {', '.join(map(str, dropped))} from {keyring.path}; key {keyring.current} remains."
            if dropped else f"Nothing to delete: {keyring.path} holds only key {keyring.current}.")
    return _report(args, {"key_file": keyring.path, "deleted_keys": dropped, "current_key": keyring.current},
                   text)


def _progress(args: argparse.Namespace) -> Callable[[int, int], None] | None:
    """A count rewritten in place on a terminal's stderr; nothing for scripts (--json, or a pipe)."""
    if args.json or not sys.stderr.isatty():
        return None
    return lambda scanned, done: print(f"\r{scanned:,} cards read, {done:,} re-encrypted", end="",
                                       file=sys.stderr, flush=True)
