"""What the gRPC control-service tests share: calls that take several round trips or a stream to
drain (creating a series, paging through cards, an export, a fee run) and state the API cannot
create on its own (a call in progress), so each test reads as the behaviour it checks."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from control._proto.radcore.v1 import radcore_pb2 as pb
from helpers_control import NOW
from radcore.store import Session, SessionState, card_key, get_card, put_card, put_session, session_key

C = grpc.StatusCode


def create(client, timeout=30, **fields):
    values = dict(name="test", quantity=10, face_balance_micro=5_000_000, rate_table="std")
    values.update(fields)
    progress = list(client.series.CreateSeries(pb.CreateSeriesRequest(series=pb.Series(**values)),
                                               timeout=timeout))
    assert progress[-1].HasField("series")
    return progress


def mask(*paths):
    return field_mask_pb2.FieldMask(paths=list(paths))


def all_cards(client, series, **kw):
    out, token = [], ""
    while True:
        page = client.cards.ListCards(pb.ListCardsRequest(filter=pb.CardFilter(series=series), page_size=1000,
                                                          page_token=token, **kw))
        out += page.cards
        token = page.next_page_token
        if not token:
            return out


def export_bytes(client, **kw):
    parts = list(client.cards.ExportCards(pb.ExportCardsRequest(**kw), timeout=60))
    assert parts[0].HasField("started") and parts[-1].HasField("finished")
    data = b"".join(p.chunk for p in parts if p.WhichOneof("kind") == "chunk")
    assert parts[-1].finished.bytes == len(data)
    return parts, data


def run_fees(client, **kw):
    replies = list(client.fees.RunFees(pb.RunFeesRequest(**kw), timeout=60))
    assert replies[-1].HasField("report") and all(r.HasField("progress") for r in replies[:-1])
    return replies[-1].report


def open_call(h, series, serial, state=SessionState.STARTED):
    """A call in progress on card `series`-`serial`, written to the store as the RADIUS side leaves it
    (an open session on gw1 reserving 300_000 and the card's matching reservation); its session key."""
    store, key = h.env.store, card_key(series, serial)
    skey = session_key("gw1", f"conf-{series}-{serial}")
    with store.transaction(write=True) as txn:
        card = get_card(txn, store, key)
        card.reserved, card.open_calls = 300_000, 1
        put_card(txn, store, key, card)
        put_session(txn, store, skey, Session(card_key=key, state=state, reserved=300_000, opened_at=NOW,
                                              deadline=NOW + 900, price_per_minute=60_000, interval=60,
                                              called="4420", prefix="44", nas="gw1"))
    return skey


__all__ = ["C", "all_cards", "create", "export_bytes", "mask", "open_call", "run_fees"]
