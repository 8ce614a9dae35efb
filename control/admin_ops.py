"""`radcore admin fees|sessions|audit|token ...`: day-to-day operations.

`token create --local` is the one command that needs no server: it opens the data directory named
by the config file and creates the token there (control.auth.create_token, audited as actor
"local"), so the first admin token can exist before anyone can call the API. The secret goes to
stdout alone, so `export RADCORE_TOKEN=$(radcore admin token create --local ...)` works; it is
shown only this once. With --json the output is the token record plus `"token": "<secret>"` (the word
the CLI uses for the secret everywhere: --token, RADCORE_TOKEN).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from control import admin as a
from control import admin_values as v
from control._proto.radcore.v1 import radcore_pb2 as pb

_ROLE = pb.Role.DESCRIPTOR
#: The audit table's Change column is a summary; `audit list --json` carries the full documents.
CHANGE_WIDTH = 160


def register(groups: argparse._SubParsersAction) -> None:
    _register_fees(groups)
    _register_sessions(groups)
    _register_audit(groups)
    _register_tokens(groups)


def _register_fees(groups: argparse._SubParsersAction) -> None:
    commands = a.add_group(groups, "fees", "maintenance fees and expiry: run now, or preview")
    p = a.add_command(commands, "run", cmd_fees_run, "run maintenance fees and expiry now",
                      description="Charge due maintenance fees (whole periods only; running twice "
                                  "charges once), expire cards past their date or period, and mark "
                                  "zero-balance cards used. The control process does this every few "
                                  "minutes anyway. Without --apply this is a dry run: it reports what "
                                  "would happen and writes nothing.",
                      examples="""\
  radcore admin fees run                  # preview for every series
  radcore admin fees run --series 45 --apply""")
    p.add_argument("--series", type=v.uint, default=0, metavar="N", help="only this series")
    p.add_argument("--apply", action="store_true", help="really charge and expire (default: dry run)")


def _register_sessions(groups: argparse._SubParsersAction) -> None:
    commands = a.add_group(groups, "sessions", "calls in progress: list, release stuck ones")
    p = a.add_command(commands, "list", cmd_sessions_list, "list open calls and their reservations",
                      examples="""\
  radcore admin sessions list
  radcore admin sessions list --card 45-000000001 --all""")
    p.add_argument("--card", default="", metavar="CARD", help="only this card's calls")
    p.add_argument("--nas", default="", metavar="NAS", help="only this gateway's calls")
    p.add_argument("--all", action="store_true", help="also settled calls still remembered")
    a.add_limit(p, 100, "sessions")

    p = a.add_command(commands, "release", cmd_sessions_release, "close a stuck call",
                      description="Close a call as the reservation sweeper would: a call that never "
                                  "started gives its hold back; a started one is charged for the time "
                                  "reported so far and its CDR written (cause Admin-Reset).",
                      examples="  radcore admin sessions release AAAAAS1jaXNjby0xAWNvbmYtMQ")
    p.add_argument("id", metavar="ID", help="the ID column of 'sessions list'")


def _register_audit(groups: argparse._SubParsersAction) -> None:
    commands = a.add_group(groups, "audit", "who changed what, when")
    p = a.add_command(commands, "list", cmd_audit_list, "list audit entries, newest first",
                      examples="""\
  radcore admin audit list
  radcore admin audit list --target card/45-000000001
  radcore admin audit list --target series/45 --since 2025-01-01 --until 2025-01-31
  radcore admin audit list --actor tk-0a1b2c3d4e5f --json""")
    p.add_argument("--target", default="", metavar="PREFIX",
                   help="target prefix: series/45, card/45- (all cards of 45), rate/std, token/...")
    p.add_argument("--actor", default="", metavar="ID", help="exact actor: a token id, local, system:...")
    p.add_argument("--since", type=v.time_arg, default=0, metavar="WHEN", help="at or after WHEN (UTC)")
    p.add_argument("--until", type=v.end_time_arg, default=0, metavar="WHEN",
                   help="at or before WHEN (a bare date includes the whole day)")
    a.add_limit(p, 50, "entries")


def _register_tokens(groups: argparse._SubParsersAction) -> None:
    commands = a.add_group(groups, "token", "API tokens: create, list, revoke")
    p = a.add_command(commands, "create", cmd_token_create, "create an API token (shown once)",
                      description="Create a bearer token. An admin token manages everything; a reseller "
                                  "token sees only that reseller's series, cards and calls. The secret "
                                  "is printed once on stdout and cannot be shown again (the server keeps "
                                  "only its hash). --local writes straight into the data directory of "
                                  "--config, with no server needed: the way to create the first admin "
                                  "token.",
                      examples="""\
  export RADCORE_TOKEN=$(radcore admin token create --local --config radcore.toml --role admin)
  radcore admin token create --role reseller --reseller acme --note "ACME billing"
  radcore admin token create --role admin --note "NOC laptop" --json""")
    p.add_argument("--role", required=True, choices=v.enum_labels(pb.Role), help="admin or reseller")
    p.add_argument("--reseller", default="", metavar="ID", help="the reseller of a reseller token")
    p.add_argument("--note", default="", metavar="TEXT", help="what the token is for")
    p.add_argument("--local", action="store_true",
                   help="no server: write to the data directory of --config (bootstrap)")
    p.add_argument("--config", "-c", default="radcore.toml", metavar="FILE",
                   help="with --local: the radcore TOML config (default: %(default)s)")

    p = a.add_command(commands, "list", cmd_token_list, "list tokens (never their secrets)",
                      examples="  radcore admin token list --all")
    p.add_argument("--all", action="store_true", help="include revoked tokens")

    p = a.add_command(commands, "revoke", cmd_token_revoke, "revoke a token (effective at once)",
                      examples="  radcore admin token revoke tk-0a1b2c3d4e5f")
    p.add_argument("id", metavar="ID", help="token id (tk-...), from 'token list'")


# --- fees --------------------------------------------------------------------------------------------

def cmd_fees_run(ctx: a.Context, args: argparse.Namespace) -> int:
    request = pb.RunFeesRequest(series=args.series, dry_run=not args.apply)
    report: pb.FeeReport | None = None
    label = "Fee run" if args.apply else "Fee run (dry run)"
    with a.ProgressBar(ctx, label) as bar:
        for msg in a.stream(ctx.service("FeeService").RunFees(request)):
            if msg.WhichOneof("kind") == "progress":
                bar.update(msg.progress.done, msg.progress.total)
            elif msg.WhichOneof("kind") == "report":
                report = msg.report
    if report is None:
        raise a.Failure("fees run: the server ended the stream without a report")
    if ctx.json:
        a.print_json(v.to_dict(report))
        return 0
    r = report
    a.fields(ctx, [
        ("Cards scanned", r.cards_scanned), ("Cards charged", r.cards_charged),
        ("Periods charged", r.periods_charged), ("Fees taken", v.money(r.fees_micro)),
        ("Fees written off", v.money(r.fees_written_off_micro)),
        ("Expired by date", r.expired_by_date), ("Expired by period", r.expired_by_period),
        ("Pending cards expired", r.pending_expired), ("Became used (zero balance)", r.used),
    ], title=f"{'Dry run' if r.dry_run else 'Fee run'} at {v.utc(r.now)}"
             f"{' for series ' + str(args.series) if args.series else ''}")
    print("Amounts are in each series' own currency.")
    if r.dry_run:
        print("Dry run: nothing was written. Run again with --apply to charge and expire.")
    return 0


# --- sessions ----------------------------------------------------------------------------------------

def cmd_sessions_list(ctx: a.Context, args: argparse.Namespace) -> int:
    service = ctx.service("SessionService")

    def fetch(size: int, token: str) -> Any:
        return service.ListSessions(pb.ListSessionsRequest(
            card_number=args.card, nas=args.nas, include_stopped=args.all, page_size=size, page_token=token))

    found, more = a.collect(fetch, "sessions", args.limit)
    if ctx.json:
        a.print_json({"sessions": [v.to_dict(s) for s in found], "more": more})
        return 0
    state = pb.SessionState.DESCRIPTOR
    rows = [(s.id, s.card_number, s.nas, s.call_id, s.called, s.prefix, v.label(state, s.state),
             v.money(s.reserved_micro), v.money(s.charged_micro), s.session_time, v.utc(s.opened_at),
             v.utc(s.deadline)) for s in found]
    caption = f"{len(found)} sessions" + (" shown; more match (raise --limit)" if more else "")
    a.table(ctx, ("ID", "Card", "NAS", "Call ID", "Called", "Prefix", "State", "Reserved", "Charged",
                  "Time s", "Opened (UTC)", "Deadline (UTC)"), rows, caption=caption,
            right=("Reserved", "Charged", "Time s"))
    return 0


def cmd_sessions_release(ctx: a.Context, args: argparse.Namespace) -> int:
    response = ctx.service("SessionService").ReleaseSession(pb.ReleaseSessionRequest(id=args.id))
    if ctx.json:
        a.print_json(v.to_dict(response))
    elif response.HasField("session"):
        s = response.session
        print(f"Released call {s.call_id} of card {s.card_number}: charged {v.money(s.charged_micro)} "
              f"for {s.session_time} s, returned {v.money(response.released_micro)}.")
    else:
        print(f"Released a call that never started: returned {v.money(response.released_micro)}.")
    return 0


# --- audit -------------------------------------------------------------------------------------------

def cmd_audit_list(ctx: a.Context, args: argparse.Namespace) -> int:
    service = ctx.service("AuditService")

    def fetch(size: int, token: str) -> Any:
        return service.ListAudit(pb.ListAuditRequest(target=args.target, actor=args.actor,
                                                     since=args.since, until=args.until,
                                                     page_size=size, page_token=token))

    entries, more = a.collect(fetch, "entries", args.limit)
    if ctx.json:
        docs = []
        for e in entries:
            doc = v.to_dict(e)
            doc["before"] = _parse(doc.pop("before_json"))
            doc["after"] = _parse(doc.pop("after_json"))
            docs.append(doc)
        a.print_json({"entries": docs, "more": more})
        return 0
    rows = [(e.seq, v.utc(e.at), e.actor, e.reseller, e.rpc, e.target,
             _changes(_parse(e.before_json), _parse(e.after_json))) for e in entries]
    caption = (f"{len(entries)} entries, newest first; amounts in micro-units; --json shows full changes"
               + ("; more match (raise --limit)" if more else ""))
    a.table(ctx, ("Seq", "At (UTC)", "Actor", "Reseller", "Operation", "Target", "Change"), rows,
            caption=caption, right=("Seq",))
    return 0


def _parse(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _changes(before: Any, after: Any) -> str:
    """`balance: 5000000 -> 3500000; reason: refund` from the entry's before/after objects, cut at
    CHANGE_WIDTH characters (--json has everything)."""
    before = before if before is not None else {}
    after = after if after is not None else {}
    if not isinstance(before, dict) or not isinstance(after, dict):
        text = " -> ".join(_short(x) for x in (before, after) if x != {})
    else:
        parts = []
        for key in dict.fromkeys([*before, *after]):
            if key in before and key in after:
                parts.append(f"{key}: {_short(before[key])} -> {_short(after[key])}")
            elif key in after:
                parts.append(f"{key}: {_short(after[key])}")
            else:
                parts.append(f"{key}: {_short(before[key])} -> (removed)")
        text = "; ".join(parts)
    return text if len(text) <= CHANGE_WIDTH else text[:CHANGE_WIDTH - 3] + "..."


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


# --- tokens ------------------------------------------------------------------------------------------

def cmd_token_create(ctx: a.Context, args: argparse.Namespace) -> int:
    if args.role == "reseller" and not args.reseller:
        raise a.UsageError("token create: --reseller is required with --role reseller")
    if args.role == "admin" and args.reseller:
        raise a.UsageError("token create: --reseller goes with --role reseller only")
    if args.local:
        token, secret = _create_local(args)
    else:
        response = ctx.service("TokenService").CreateToken(pb.CreateTokenRequest(
            role=v.enum_value(pb.Role, args.role), reseller=args.reseller, note=args.note))
        token, secret = v.to_dict(response.token), response.secret
    if ctx.json:
        # Flat, and "token" is the bearer string, as in --token and RADCORE_TOKEN.
        a.print_json({**token, "token": secret})
    else:
        owner = f" for reseller {token['reseller']}" if token["reseller"] else ""
        ctx.note(f"Created {token['role']} token {token['id']}{owner}. The secret below is shown only "
                 "this once; store it now (e.g. in RADCORE_TOKEN).")
        print(secret)
    return 0


def _create_local(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Create the token directly in the data directory of the config file (no server)."""
    from control.auth import LOCAL, TokenRecord, create_token, list_tokens
    from radcore.clock import default_clock
    from radcore.config_file import load_config
    from radcore.errors import ConfigError, RadcoreError, StoreError
    from radcore.store import Store

    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise a.UsageError(str(e)) from None
    try:
        store = Store(config.server.data_dir, map_size=config.server.map_size_mb << 20)
    except StoreError as e:
        raise a.Failure(str(e)) from None
    try:
        token_id, secret = create_token(store, args.role, args.reseller, note=args.note,
                                        clock=default_clock())
        rec: TokenRecord = next(r for r in list_tokens(store, LOCAL) if r.id == token_id)
    except StoreError as e:
        raise a.Failure(str(e)) from None
    except RadcoreError as e:  # Invalid role/reseller/note
        raise a.UsageError(str(e)) from None
    finally:
        store.close()
    doc = rec.public()
    doc["created_at"] = v.utc(rec.created_at) or None
    doc["revoked_at"] = v.utc(rec.revoked_at) or None
    return doc, secret


def cmd_token_list(ctx: a.Context, args: argparse.Namespace) -> int:
    tokens = ctx.service("TokenService").ListTokens(pb.ListTokensRequest(include_revoked=args.all)).tokens
    if ctx.json:
        a.print_json({"tokens": [v.to_dict(t) for t in tokens]})
        return 0
    rows = [(t.id, v.label(_ROLE, t.role), t.reseller, t.note, v.utc(t.created_at),
             v.utc(t.revoked_at) if t.revoked else "") for t in tokens]
    a.table(ctx, ("ID", "Role", "Reseller", "Note", "Created (UTC)", "Revoked (UTC)"), rows,
            caption=f"{len(tokens)} tokens")
    return 0


def cmd_token_revoke(ctx: a.Context, args: argparse.Namespace) -> int:
    token = ctx.service("TokenService").RevokeToken(pb.RevokeTokenRequest(id=args.id))
    if ctx.json:
        a.print_json(v.to_dict(token))
    else:
        print(f"Token {token.id} is revoked (since {v.utc(token.revoked_at)}).")
    return 0
