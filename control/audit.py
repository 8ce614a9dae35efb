"""The audit log: who changed what, when, from what to what.

Entries are appended inside the caller's write transaction, so an entry exists exactly when its change
was committed: an aborted change leaves no entry and no change escapes the log. The key is a u64
big-endian sequence number, so the newest entry is the cursor's last record and paging backwards is
one cursor walk. Values are JSON (read rarely, by people). Each entry carries the `tenant` that owns
the touched object, which is what lets a reseller read the entries about its own objects and nothing
else.

PINs and token secrets are never written here: callers pass only the fields that changed.

The paging helpers every listing shares live here too, because every module that lists also audits.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb

from radcore.errors import Invalid, StoreError
from radcore.store import Store

if TYPE_CHECKING:
    from control.auth import Principal

_SEQ = struct.Struct(">Q")
DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass(slots=True)
class AuditEntry:
    seq: int
    at: int
    actor: str
    role: str
    reseller: str
    rpc: str
    target: str
    tenant: str = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


def page_limit(page_size: int) -> int:
    """0 means the default; anything larger than MAX_PAGE is clamped rather than refused, so a CLI
    asking for "everything" still gets pages."""
    if page_size < 0:
        raise Invalid("page_size", "must be >= 0")
    return min(page_size or DEFAULT_PAGE, MAX_PAGE)


def parse_int_token(token: str, low: int = 0, high: int = 2**64 - 1) -> int | None:
    """Page tokens that are plain integers (a series number, a sequence number)."""
    if not token:
        return None
    if not token.isascii() or not token.isdigit() or not low <= int(token) <= high:
        raise Invalid("page_token", "is not a token this listing returned")
    return int(token)


def record(txn: lmdb.Transaction, store: Store, principal: Principal, rpc: str, target: str, *,
           now: int, tenant: str = "", before: dict[str, Any] | None = None,
           after: dict[str, Any] | None = None) -> int:
    """Append one entry in `txn` (a write transaction that also carries the change); returns its seq."""
    try:
        cursor = txn.cursor(db=store.audit)
        seq = _SEQ.unpack(cursor.key())[0] + 1 if cursor.last() else 1
        entry = {"at": now, "actor": principal.token_id, "role": principal.role,
                 "reseller": principal.reseller, "rpc": rpc, "target": target, "tenant": tenant,
                 "before": before, "after": after}
        txn.put(_SEQ.pack(seq), json.dumps(entry, separators=(",", ":"), sort_keys=True).encode(),
                db=store.audit, append=True)
    except lmdb.Error as e:
        raise store.error(e) from e
    return seq


def diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the keys whose values differ, so an entry shows the change rather than the whole record."""
    keys = [k for k in after if before.get(k) != after[k]]
    return {k: before.get(k) for k in keys}, {k: after[k] for k in keys}


def _decode(key: bytes, raw: bytes) -> AuditEntry:
    try:
        doc = json.loads(bytes(raw))
        return AuditEntry(seq=_SEQ.unpack(key)[0], at=doc["at"], actor=doc["actor"], role=doc["role"],
                          reseller=doc["reseller"], rpc=doc["rpc"], target=doc["target"],
                          tenant=doc.get("tenant", ""), before=doc.get("before"), after=doc.get("after"))
    except (ValueError, KeyError, struct.error) as e:
        raise StoreError(f"corrupt audit entry: {e}") from e


def list_audit(store: Store, principal: Principal, *, target: str = "", actor: str = "", since: int = 0,
               until: int = 0, page_size: int = 0,
               page_token: str = "") -> tuple[list[AuditEntry], str]:
    """Entries newest first matching every given filter; `target` is a prefix ("card/45-").

    A reseller sees only entries whose tenant is itself. The scan is linear in the entries it skips;
    the log of a calling-card operator grows by thousands of entries a day, not millions.
    """
    limit = page_limit(page_size)
    start = parse_int_token(page_token)
    if since and until and until < since:
        raise Invalid("until", "is before since")
    out: list[AuditEntry] = []
    more = False
    with store.transaction() as txn:
        cursor = txn.cursor(db=store.audit)
        if start is None:
            found = cursor.last()
        else:
            # The entry just below the token: step back from the first key >= token, or from the end.
            found = cursor.prev() if cursor.set_range(_SEQ.pack(start)) else cursor.last()
        while found:
            entry = _decode(cursor.key(), cursor.value())
            found = cursor.prev()
            if until and entry.at > until:
                continue
            if since and entry.at < since:
                continue
            if target and not entry.target.startswith(target):
                continue
            if actor and entry.actor != actor:
                continue
            if not principal.is_admin and entry.tenant != principal.reseller:
                continue
            if len(out) == limit:
                more = True
                break
            out.append(entry)
    return out, (str(out[-1].seq) if more else "")
