"""Bearer tokens, the Principal they map to, tenant checks, and the one authorization interceptor.

A token is 32 random bytes (`secrets.token_urlsafe(32)`) shown to its creator once. The store keeps
only its SHA-256 as the key of the `tokens` database, so checking a presented token is one lookup by
hash: no comparison of secrets happens in Python at all (nothing to leak through timing), and a copy
of the data directory reveals no usable token. The record holds the role, the reseller of a reseller
token, a note, and a revoked flag (revocation keeps the record, so the audit log's actor ids stay
explainable).

Tenancy rule, used by every domain module: a reseller principal sees and changes only objects whose
owner is its reseller id, and another tenant's object must look exactly like a missing one
(`NotFound`), so ids cannot be probed. Operations reserved to admins raise `PermissionError`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Callable

import grpc
import lmdb

from control import audit
from radcore.clock import Clock
from radcore.errors import Invalid, NotFound, RadcoreError, StoreError
from radcore.store import Store, name_key

ADMIN = "admin"
RESELLER = "reseller"
ROLES = (ADMIN, RESELLER)
#: Methods that answer without a token: load balancers and grpcurl must work before anyone logs in.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_TOKEN_ID = re.compile(r"tk-[0-9a-f]{12}")


class Unauthenticated(RadcoreError):
    """No token, a malformed one, or one that is unknown or revoked."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. `token_id` is what the audit log records as the actor."""

    role: str
    reseller: str
    token_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


#: The CLI working directly on the data directory (bootstrap of the first token).
LOCAL = Principal(ADMIN, "", "local")
#: The control process's periodic fee run.
SCHEDULER = Principal(ADMIN, "", "system:scheduler")


def require_admin(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise PermissionError(f"{what} requires an admin token")


def owns(principal: Principal, owner: str) -> bool:
    return principal.is_admin or principal.reseller == owner


def check_owner(principal: Principal, owner: str, what: str) -> None:
    """NotFound (never PermissionError) for another tenant's object: existence must not leak."""
    if not owns(principal, owner):
        raise NotFound(f"{what} does not exist")


# --- tokens -----------------------------------------------------------------------------------------

@dataclass(slots=True)
class TokenRecord:
    id: str
    role: str
    reseller: str = ""
    note: str = ""
    created_at: int = 0
    revoked: bool = False
    revoked_at: int = 0

    def public(self) -> dict[str, Any]:
        return asdict(self)


def hash_token(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def token_records(txn: lmdb.Transaction, store: Store) -> list[tuple[bytes, TokenRecord]]:
    """(hash key, record) of every token; there are a handful, so a scan is the index."""
    out = []
    for key, raw in txn.cursor(db=store.tokens):
        try:
            out.append((bytes(key), TokenRecord(**json.loads(bytes(raw)))))
        except (ValueError, TypeError) as e:
            raise StoreError(f"corrupt token record: {e}") from e
    return out


def create_token(store: Store, role: str, reseller: str, *, note: str = "", clock: Clock,
                 principal: Principal = LOCAL) -> tuple[str, str]:
    """Create a token and return (token_id, plaintext). The plaintext is not stored anywhere.

    Callable without a server: the CLI bootstraps the first admin token against the data directory
    (the audit log then names the actor "local").
    """
    require_admin(principal, "creating tokens")
    if role not in ROLES:
        raise Invalid("role", f"must be one of {', '.join(ROLES)}")
    if role == ADMIN and reseller:
        raise Invalid("reseller", "must be empty for an admin token")
    if not isinstance(note, str) or len(note) > 500:
        raise Invalid("note", "must be text of at most 500 characters")
    plaintext = secrets.token_urlsafe(32)
    now = clock()
    with store.transaction(write=True) as txn:
        if role == RESELLER:
            if not reseller:
                raise Invalid("reseller", "is required for a reseller token")
            if txn.get(name_key(reseller, "reseller"), db=store.resellers) is None:
                raise Invalid("reseller", f"reseller {reseller!r} does not exist")
        taken = {rec.id for _, rec in token_records(txn, store)}
        token_id = f"tk-{secrets.token_hex(6)}"
        while token_id in taken:
            token_id = f"tk-{secrets.token_hex(6)}"
        rec = TokenRecord(token_id, role, reseller, note, now)
        txn.put(hash_token(plaintext), json.dumps(rec.public()).encode(), db=store.tokens)
        audit.record(txn, store, principal, "CreateToken", f"token/{token_id}", now=now,
                     tenant=reseller, after=rec.public())
    return token_id, plaintext


def authenticate(store: Store, plaintext: str) -> Principal:
    if not plaintext:
        raise Unauthenticated("missing bearer token")
    with store.transaction() as txn:
        raw = txn.get(hash_token(plaintext), db=store.tokens)
    if raw is None:
        raise Unauthenticated("invalid or revoked token")
    rec = TokenRecord(**json.loads(bytes(raw)))
    if rec.revoked:
        raise Unauthenticated("invalid or revoked token")
    return Principal(rec.role, rec.reseller, rec.id)


def list_tokens(store: Store, principal: Principal, *, include_revoked: bool = False) -> list[TokenRecord]:
    """Admins see all tokens, a reseller its own. Ordered by creation time."""
    with store.transaction() as txn:
        recs = [rec for _, rec in token_records(txn, store)]
    recs = [r for r in recs if (include_revoked or not r.revoked)
            and (principal.is_admin or (r.role == RESELLER and r.reseller == principal.reseller))]
    return sorted(recs, key=lambda r: (r.created_at, r.id))


def revoke_token(store: Store, principal: Principal, token_id: str, *, clock: Clock) -> TokenRecord:
    """Mark revoked (idempotent); the very next RPC with it is refused. A token may revoke itself."""
    require_admin(principal, "revoking tokens")
    if not _TOKEN_ID.fullmatch(token_id or ""):
        raise Invalid("id", f"not a token id: {token_id!r}")
    now = clock()
    with store.transaction(write=True) as txn:
        for key, rec in token_records(txn, store):
            if rec.id == token_id:
                break
        else:
            raise NotFound(f"token {token_id} does not exist")
        if not rec.revoked:
            rec.revoked, rec.revoked_at = True, now
            txn.put(key, json.dumps(rec.public()).encode(), db=store.tokens)
            audit.record(txn, store, principal, "RevokeToken", f"token/{token_id}", now=now,
                         tenant=rec.reseller, before={"revoked": False},
                         after={"revoked": True, "revoked_at": now})
    return rec


# --- the interceptor --------------------------------------------------------------------------------

def bearer(metadata: Any) -> str:
    """The token from `authorization: Bearer <token>` metadata, or "" if there is none."""
    value = ""
    for key, val in metadata or ():
        if key.lower() == "authorization":
            value = val if isinstance(val, str) else val.decode("latin-1")
            break
    scheme, _, token = value.strip().partition(" ")
    if value and scheme.lower() != "bearer":
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return token.strip()


class PrincipalContext:
    """The servicer context with the caller's Principal attached; everything else is the real context.

    Passed instead of the grpc context, so the principal travels with the call itself, including
    into response generators that run after the handler function has returned (a contextvar set
    around the handler would be gone by then).
    """

    __slots__ = ("_context", "principal")

    def __init__(self, context: grpc.ServicerContext, principal: Principal):
        self._context = context
        self.principal = principal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def principal_of(context: Any) -> Principal:
    """The caller; refuses to run a handler that somehow bypassed the interceptor."""
    principal = getattr(context, "principal", None)
    if not isinstance(principal, Principal):
        raise Unauthenticated("no authorization interceptor on this server")
    return principal


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every RPC except health and reflection, then hands the servicer a
    PrincipalContext. Authentication runs on the handler's worker thread (not the server's polling
    thread), inside one short read transaction, so revocation takes effect on the next call."""

    def __init__(self, store: Store, open_prefixes: tuple[str, ...] = OPEN_METHOD_PREFIXES):
        self.store = store
        self.open_prefixes = open_prefixes

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self.open_prefixes):
            return handler
        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        return handler._replace(**{kind: self._wrap(getattr(handler, kind))
                                   for kind in kinds if getattr(handler, kind) is not None})

    def _wrap(self, behavior: Callable) -> Callable:
        store = self.store

        def authorized(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                principal = authenticate(store, bearer(context.invocation_metadata()))
            except Unauthenticated as e:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
            except StoreError as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            return behavior(request, PrincipalContext(context, principal))

        return authorized
