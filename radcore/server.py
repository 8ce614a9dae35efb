"""The RADIUS data plane: a supervisor process and N forked UDP workers sharing ports.

Per wakeup a worker drains up to `batch_max` datagrams from its auth and acct sockets (and, having
answered them, polls for `busy_poll_us` before it sleeps again), then does
everything per batch: client lookup and duplicate detection per datagram (dict hits), one
`fastpath.parse_batch`, one `handler.handle` (the prepaid engine's single LMDB transaction: group
commit), one `fastpath.encode_responses`, then one `sendto` per reply. Replies leave only after
`handle` returns, i.e. after the batch is durable (DESIGN.md, "Speed design").

Sockets are bound by the supervisor before it forks (`radcore.listeners`); each worker serves
its own auth and acct socket.

Hygiene (DESIGN.md, "Protocol hygiene"): unknown client, bad authenticator, bad or missing
Message-Authenticator and malformed packets are dropped silently and counted by reason
(`radcore.metrics.DROP_REASONS`); Status-Server (RFC 5997) is answered here, never by the handler.
"""

from __future__ import annotations

import gc
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from . import dictionary as d
from . import fastpath
from .clock import default_clock
from .config import Client, Config
from .config_file import load_config
from .dupcache import ACCT, AUTH, BatchDeduper, DuplicateCache
from .errors import ConfigError, PacketError
from .metrics import RateLimitedLog, Recorder

if TYPE_CHECKING:
    from .packet import Request

log = logging.getLogger(__name__)

Attribute = tuple[int, bytes]
Source = tuple[str, int]
TICK_SECONDS = 1.0
_PORT_CODES = {AUTH: frozenset({d.Code.ACCESS_REQUEST, d.Code.STATUS_SERVER}),
               ACCT: frozenset({d.Code.ACCOUNTING_REQUEST, d.Code.STATUS_SERVER})}


class NoReply:
    """A handler's explicit "send nothing", with the `DROP_REASONS` label it is counted under.

    A plain None means the same, counted as `no_reply`. The entry for that request is removed from
    the duplicate cache, so the NAS's retransmission is processed again rather than ignored.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str = "no_reply"):
        self.reason = reason


Reply = tuple[int, list[Attribute]] | NoReply | None


class Handler(Protocol):
    """The seam the prepaid engine fills; one instance per worker, created after fork.

    `handle` gets every verified Access-Request and Accounting-Request of a batch, in arrival
    order, and returns one entry per request: (reply code, reply attributes), or None / `NoReply`
    for silence. It runs its own transaction for the whole batch and returns only once that is
    durable. Optional methods: `tick(now)` (epoch seconds; called about every second, for
    sweepers), `attach_metrics(recorder)` (once, before the first batch, to count its own events in
    the worker's /metrics row) and `close()` (at worker exit).
    """

    def handle(self, batch: list[tuple[Request, Client, Source]]) -> list[Reply]: ...


HandlerFactory = Callable[[Config], Handler]


class NoStoreHandler:
    """The honest default before a card store is plugged in: reject every call, record nothing.

    Accounting gets no Accounting-Response, because that reply means "recorded" (RFC 2866 §4.1)
    and would make the NAS discard a call record we never stored; it is counted `not_recorded`.
    """

    _REJECT = (d.Code.ACCESS_REJECT, [(d.REPLY_MESSAGE, b"no card store configured")])
    _NOT_RECORDED = NoReply("not_recorded")

    def __init__(self, config: Config | None = None):
        self.config = config

    def handle(self, batch: list[tuple[Request, Client, Source]]) -> list[Reply]:
        return [self._REJECT if req.code == d.Code.ACCESS_REQUEST else self._NOT_RECORDED
                for req, _, _ in batch]


# ---------------------------------------------------------------------------------------------
# Worker


class Worker:
    """One process's event loop over its own auth and acct sockets.

    The sockets belong to SO_REUSEPORT groups shared with the other workers; the kernel hashes
    each client's 4-tuple to one socket, so every retransmission of a NAS reaches this same
    worker, and the per-worker duplicate cache sees it (module docstring).
    """

    def __init__(self, config: Config, handler: Handler, recorder: Recorder,
                 auth_sock: socket.socket, acct_sock: socket.socket, *, parent_pid: int | None = None):
        self.config = config
        self.handler = handler
        self.recorder = recorder
        self.socks = ((auth_sock, AUTH), (acct_sock, ACCT))
        self.parent_pid = parent_pid
        self.clock = default_clock()
        self.ratelog = RateLimitedLog(log)
        self._stopping = False
        self._reload = False
        self._tick = getattr(handler, "tick", None)
        attach = getattr(handler, "attach_metrics", None)  # a handler may count events of its own
        if attach is not None:
            attach(recorder)
        # The C batch loop (recvmmsg/sendmmsg) where it is built, with the handler's C lanes
        # plugged in; `handle_batch` stays the reference and takes whatever they decline.
        lane = fastpath.load_lane()
        self.lane = lane.Lane(list(self.socks), config.server.batch_max) if lane is not None else None
        # The lane keys its duplicate cache straight from each datagram's sockaddr, so it needs the C
        # one; the Python path shares it through the reference's API (radcore.dupcache).
        cache_type = fastpath.load_lane_cache() if lane is not None else DuplicateCache
        self.cache = cache_type(config.server.duplicate_cache_seconds)
        self.fast = getattr(handler, "fast_answer", None) if self.lane is not None else None
        self.fast_write = getattr(handler, "fast_write", None) if self.lane is not None else None
        # Poll before sleeping (ServerConfig.busy_poll_us): a C loop over poll(2), so only with the lane.
        self.busy_poll = config.server.busy_poll_us / 1e6 if self.lane is not None else 0.0
        if self.lane is not None:
            self.lane.on_recv_error = self._on_recv_error
            self.lane.on_lane_error = self._on_lane_error
        self._journal_seen = (0, 0)  # the write lane's appends and checkpoints already counted
        if self.fast_write is not None:
            self.fast_write.hold(config.server.checkpoint_ms)

    def run(self, sigmask: set | None = None) -> int:
        """Serve until SIGTERM (or the supervisor dies); the batch in hand is always finished.

        `sigmask` is restored once the handlers are installed: the supervisor forks with signals
        blocked, so an early SIGHUP is delivered to our handler instead of killing the process.
        """
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        sel = selectors.DefaultSelector()
        try:
            for index, (sock, _) in enumerate(self.socks):
                sel.register(sock, selectors.EVENT_READ, index)
            sel.register(wake_r, selectors.EVENT_READ, None)
            signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
            signal.signal(signal.SIGTERM, self._on_term)
            signal.signal(signal.SIGHUP, self._on_hup)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns Ctrl-C into SIGTERM
            if sigmask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
            # What exists now (config, handler, store handles, memo dicts) lives as long as the
            # worker, so the cyclic collector need not walk it again: a full collection once walked
            # the reference's 65,536-entry duplicate cache in about 15 ms, a latency spike every few
            # seconds at tens of thousands of requests per second; frozen, it takes microseconds.
            gc.collect()
            gc.freeze()
            next_tick = time.monotonic()
            ready: list[int] = []
            while not self._stopping:
                if not ready:
                    self._checkpoint()  # idle: nothing may keep the store's write lock
                    for key, _ in sel.select(max(0.0, next_tick - time.monotonic())):
                        if key.data is None:
                            _drain(wake_r)
                        else:
                            ready.append(key.data)
                if ready:
                    self._serve(ready)
                    if self.fast_write is not None:
                        self.fast_write.flush_due()
                        self._count_journal()
                    ready = self._next_ready()
                if self._reload:
                    self._reload_clients()
                if time.monotonic() >= next_tick:
                    self._on_tick()
                    next_tick = time.monotonic() + TICK_SECONDS
            return 0
        finally:
            self._checkpoint()
            signal.set_wakeup_fd(-1)
            sel.close()
            wake_r.close()
            wake_w.close()

    def _next_ready(self) -> list[int]:
        """After a batch: the sockets that already hold the next one, polling `busy_poll` for them.

        Replies held for their journal record's flush (Lane.settle) go first if nothing is waiting
        yet: when a batch held every request in flight, their senders send nothing more until they
        have them, and an empty poll must not pass for idleness (which commits)."""
        if self.busy_poll <= 0:
            return []
        if self.lane.held_replies:
            ready = self.lane.spin(0)
            if ready:
                return ready
            self._release()
        return self.lane.spin(self.busy_poll)

    def _release(self) -> None:
        """Send the write lane's replies held for their journal record's flush, once it is done."""
        released, accounted = self.lane.settle(self.cache)
        if released:
            self._count_fast(released, accounted)

    def _checkpoint(self) -> None:
        """Send the write lane's replies still waiting for their journal record's flush, then commit
        what it holds open across batches (radcore.journal). Should the commit fail, the journal
        still has it: the next write transaction replays it."""
        if self.fast_write is None:
            return
        self._release()
        try:
            self.fast_write.flush()
        except Exception:
            self.recorder.add("internal_errors")
            self.ratelog(logging.ERROR, "checkpoint", "checkpoint commit failed; the journal keeps "
                         "its batches for recovery", exc_info=True)
        self._count_journal()

    def _count_journal(self) -> None:
        lane = self.fast_write
        appends, checkpoints = self._journal_seen
        if lane.appends != appends or lane.checkpoints != checkpoints:
            self.recorder.add("journal_appends", lane.appends - appends)
            self.recorder.add("checkpoints", lane.checkpoints - checkpoints)
            self._journal_seen = (lane.appends, lane.checkpoints)
            self.recorder.publish()

    def _on_term(self, signum, frame) -> None:
        self._stopping = True

    def _on_hup(self, signum, frame) -> None:
        self._reload = True

    def _serve(self, ready: list[int]) -> None:
        """Drain the ready sockets (indexes into `socks`) and answer the batch."""
        if self.lane is not None:
            self._serve_lane(ready)
        else:
            self._serve_python([self.socks[i] for i in ready])

    def _serve_lane(self, ready: list[int]) -> None:
        """The C loop: one recvmmsg per socket and pass, common answers in C, one sendmmsg per socket."""
        lane = self.lane
        if not lane.receive(ready):
            return
        started = time.perf_counter()
        answered = 0
        try:
            answered, rest = lane.serve(self.fast, self.config, self.cache, self.fast_write)
            if answered:
                self._count_fast(answered, lane.accounted)
            if rest:
                self._checkpoint()  # the Python path reads and writes committed state
                answered += self.handle_batch(rest)
        except Exception:
            self.recorder.add("internal_errors")
            self.ratelog(logging.ERROR, "internal", "batch of %d datagrams failed", lane.received,
                         exc_info=True)
        finally:
            coalescing = lane.gso
            sent, failed = lane.flush()
            if coalescing and not lane.gso:
                log.warning("the reply path refuses UDP GSO: replies now leave one datagram per message")
        for address, error in failed:
            answered -= 1
            self.recorder.add("send_errors")
            self.ratelog(logging.WARNING, "send", "sendmmsg to %s failed: %s", address, error)
        self.recorder.add("batches")
        self.recorder.observe(time.perf_counter() - started, answered)
        self.recorder.publish()

    def _count_fast(self, answered: int, accounted: int) -> None:
        """Count replies the C lanes sent, `accounted` of them Accounting-Responses."""
        if answered > accounted:
            self.recorder.received(d.Code.ACCESS_REQUEST, answered - accounted)
            self.recorder.replied(d.Code.ACCESS_ACCEPT, answered - accounted)
        if accounted:
            self.recorder.received(d.Code.ACCOUNTING_REQUEST, accounted)
            self.recorder.replied(d.Code.ACCOUNTING_RESPONSE, accounted)
        self.recorder.add("fast_answers", answered)

    def _on_recv_error(self, error: str) -> None:
        self.ratelog(logging.WARNING, "recv", "recvmmsg failed: %s", error)

    def _on_lane_error(self, exc: Exception) -> None:
        self.recorder.add("internal_errors")
        self.ratelog(logging.ERROR, "lane", "C lane failed, its part of the batch takes the Python path: %s",
                     exc, exc_info=exc)

    def _serve_python(self, ready: list[tuple[socket.socket, int]]) -> None:
        """Drain the ready sockets round-robin (so neither port starves the other), then handle."""
        batch: list[tuple[bytes, tuple, socket.socket, int]] = []
        budget = self.config.server.batch_max
        active = list(ready)
        while active and len(batch) < budget:
            for entry in list(active):
                sock, kind = entry
                try:
                    data, addr = sock.recvfrom(d.MAX_PACKET_LENGTH)
                except (BlockingIOError, InterruptedError):
                    active.remove(entry)
                    continue
                except OSError as exc:  # e.g. ICMP-induced errors; the socket stays usable
                    self.ratelog(logging.WARNING, "recv", "recvfrom failed: %s", exc)
                    active.remove(entry)
                    continue
                batch.append((data, addr, sock, kind))
                if len(batch) >= budget:
                    break
        if not batch:
            return
        started = time.perf_counter()
        try:
            answered = self.handle_batch(batch)
        except Exception:
            answered = 0
            self.recorder.add("internal_errors")
            self.ratelog(logging.ERROR, "internal", "batch of %d datagrams failed", len(batch),
                         exc_info=True)
        self.recorder.add("batches")
        self.recorder.observe(time.perf_counter() - started, answered)
        self.recorder.publish()

    def handle_batch(self, batch: list[tuple[bytes, tuple, socket.socket, int]]) -> int:
        """Answer one batch of (datagram, source, socket, port kind); returns replies sent."""
        rec, cache, client_for = self.recorder, self.cache, self.config.client_for
        dedup = BatchDeduper()
        items: list[tuple[bytes, bytes, bool]] = []
        pending: list[tuple[tuple, socket.socket, int, Client, tuple | None]] = []
        followers: list[tuple[int, tuple, socket.socket]] = []
        answered = 0
        for data, addr, sock, kind in batch:
            code = data[0] if data else 0
            rec.received(code)
            client = client_for(addr[0])
            if client is None:
                rec.dropped("unknown_client")
                self.ratelog(logging.WARNING, "unknown_client", "dropped datagram from unknown client %s",
                             addr[0])
                continue
            key = None
            if len(data) >= d.HEADER_LENGTH and code != d.Code.STATUS_SERVER:
                if code in d.REQUEST_CODES and code not in _PORT_CODES[kind]:
                    rec.dropped("wrong_port")
                    self.ratelog(logging.WARNING, "wrong_port", "dropped code %s from %s (%s) on the %s port",
                                 code, addr[0], client.name, "auth" if kind == AUTH else "acct")
                    continue
                key = (addr[0], addr[1], data[1], kind)
                authenticator = data[4:20]
                cached = cache.lookup(key, authenticator)
                if cached is not None:
                    rec.add("duplicates")
                    answered += self._send(sock, cached, addr)
                    continue
                leader = dedup.leader(key, authenticator, len(items))
                if leader is not None:
                    rec.add("duplicates")
                    followers.append((leader, addr, sock))
                    continue
            items.append((data, client.secret, client.require_message_authenticator))
            pending.append((addr, sock, kind, client, key))
        if not items:
            return answered

        to_encode: list[tuple[int, Request, int, Sequence[Attribute], bytes]] = []
        to_handler: list[tuple[Request, Client, Source]] = []
        handler_pos: list[int] = []
        for pos, result in enumerate(fastpath.parse_batch(items)):
            addr, _, kind, client, _ = pending[pos]
            if isinstance(result, PacketError):
                rec.dropped(result.reason)
                self.ratelog(logging.INFO, result.reason, "dropped packet from %s (%s): %s",
                             addr[0], client.name, result)
            elif result.code == d.Code.STATUS_SERVER:
                code = d.Code.ACCESS_ACCEPT if kind == AUTH else d.Code.ACCOUNTING_RESPONSE
                to_encode.append((pos, result, code, (), client.secret))
            else:
                to_handler.append((result, client, (addr[0], addr[1])))
                handler_pos.append(pos)
        if to_handler:
            outcomes = self._call_handler(to_handler)
            for (req, client, _), pos, outcome in zip(to_handler, handler_pos, outcomes, strict=True):
                if outcome is None or isinstance(outcome, NoReply):
                    rec.dropped(outcome.reason if outcome is not None else "no_reply")
                    if pending[pos][4] is not None:
                        cache.discard(pending[pos][4])
                else:
                    to_encode.append((pos, req, outcome[0], outcome[1], client.secret))

        sent: dict[int, bytes] = {}
        for (pos, req, code, _, _), wire in zip(to_encode, self._encode(to_encode), strict=True):
            if wire is None:
                continue
            addr, sock, _, _, key = pending[pos]
            answered += self._send(sock, wire, addr)
            if req.code == d.Code.STATUS_SERVER:
                rec.status_replied()
            else:
                rec.replied(code)
                if key is not None:
                    cache.store(key, req.authenticator, wire)
            sent[pos] = wire
        for leader, addr, sock in followers:
            wire = sent.get(leader)
            if wire is not None:
                answered += self._send(sock, wire, addr)
        return answered

    def _call_handler(self, batch: list[tuple[Request, Client, Source]]) -> list:
        try:
            outcomes = list(self.handler.handle(batch))
        except Exception:
            self.ratelog(logging.ERROR, "handler", "handler failed on a batch of %d requests",
                         len(batch), exc_info=True)
            return [NoReply("handler_error")] * len(batch)
        if len(outcomes) != len(batch):
            self.ratelog(logging.ERROR, "handler_len", "handler returned %d replies for %d requests",
                         len(outcomes), len(batch))
            return [NoReply("handler_error")] * len(batch)
        return outcomes

    def _encode(self, items: list[tuple[int, Request, int, Sequence[Attribute], bytes]]) -> list:
        """Encode all replies in one call; if one is bad, find it instead of losing the batch."""
        if not items:
            return []
        batch = [(req, code, attrs, secret) for _, req, code, attrs, secret in items]
        try:
            return fastpath.encode_responses(batch)
        except Exception:
            pass
        out: list[bytes | None] = []
        for entry in batch:
            try:
                out.extend(fastpath.encode_responses([entry]))
            except Exception as exc:
                self.recorder.dropped("encode_error")
                self.ratelog(logging.ERROR, "encode", "cannot encode reply code %s: %s", entry[1], exc)
                out.append(None)
        return out

    def _send(self, sock: socket.socket, wire: bytes, addr: tuple) -> int:
        if self.lane is not None:  # goes out with the batch's sendmmsg; refusals are counted there
            self.lane.queue(sock, wire, addr)
            return 1
        try:
            sock.sendto(wire, addr)
            return 1
        except OSError as exc:  # full send buffer (non-blocking) or an unreachable route
            self.recorder.add("send_errors")
            self.ratelog(logging.WARNING, "send", "sendto %s failed: %s", addr[0], exc)
            return 0

    def _on_tick(self) -> None:
        self.cache.expire()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.error("supervisor %d is gone; worker exiting", self.parent_pid)
            self._stopping = True
        if self._tick is not None:
            try:
                self._tick(self.clock())
            except Exception:
                self.recorder.add("internal_errors")
                self.ratelog(logging.ERROR, "tick", "handler tick failed", exc_info=True)
        self.recorder.publish()

    def _reload_clients(self) -> None:
        self._reload = False
        try:
            fresh = load_config(self.config.path)
        except ConfigError as exc:
            log.error("SIGHUP: keeping %d clients, the new config is unusable: %s",
                      len(self.config.clients), exc)
            return
        self.config = self.config.with_clients_of(fresh)
        log.info("SIGHUP: reloaded %d clients", len(self.config.clients))


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(512):
            pass
    except (BlockingIOError, InterruptedError):
        pass
