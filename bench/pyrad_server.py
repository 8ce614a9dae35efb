"""The pyrad baseline: what a carrier gets from the obvious pure-Python RADIUS server.

`pyrad.server.Server` with an in-memory table of the provisioned cards (card number -> PIN):

- Access-Request: Message-Authenticator required and verified by pyrad (`enforce_ma`), the PIN
  decrypted and compared; Access-Accept with the same attributes FreeRADIUS's users file returns
  (h323-return-code, -credit-amount, -currency, -billing-model, plus h323-credit-time and
  Session-Timeout when a Called-Station-Id asks for number authorization); pyrad adds a
  Message-Authenticator to replies to Access-Requests. A wrong PIN or unknown card gets
  Access-Reject with h323-return-code=2.
- Accounting-Request: Request Authenticator verified by pyrad, one line appended to a file (written
  and flushed per request, no fsync: like FreeRADIUS's detail writer), Accounting-Response.

One process, one thread, pyrad's poll loop: one datagram per wakeup.

    python -m bench.pyrad_server --cards FILE --secret S --acct-file F [--ready-file R]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from pyrad import dictionary, packet, server

from bench.provision import ACCEPT_ATTRIBUTES, CREDIT_TIME

DICTIONARY = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "dictionary"
log = logging.getLogger("bench.pyrad_server")


class CardServer(server.Server):
    """pyrad's Server with a card table and a flat accounting file."""

    def __init__(self, cards: dict[str, str], secret: bytes, acct_file: str, *, host: str = "127.0.0.1",
                 auth_port: int = 0, acct_port: int = 0):
        super().__init__(addresses=[], authport=auth_port, acctport=acct_port,
                         hosts={host: server.RemoteHost(host, secret, "bench")},
                         dict=dictionary.Dictionary(str(DICTIONARY)), enforce_ma=True)
        self.cards = cards
        self.acct = open(acct_file, "a")  # noqa: SIM115 (appended to until the server exits)
        self.BindToAddress(host)
        for sock in self.authfds + self.acctfds:  # as radcore and FreeRADIUS (recv_buff) are configured
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.auth_port = self.authfds[0].getsockname()[1]
        self.acct_port = self.acctfds[0].getsockname()[1]

    def HandleAuthPacket(self, pkt):  # pyrad's override hook
        user = pkt["User-Name"][0] if "User-Name" in pkt else ""
        try:
            pin = pkt.PwDecrypt(pkt[2][0]) if 2 in pkt else None
        except UnicodeDecodeError:
            pin = None
        expected = self.cards.get(user)
        reply = self.CreateReplyPacket(pkt)
        if expected is None or pin != expected:
            reply.code = packet.AccessReject
            reply["h323-return-code"] = "h323-return-code=2"
        else:
            for name, value in ACCEPT_ATTRIBUTES:
                reply[name] = value
            if "Called-Station-Id" in pkt:
                reply["h323-credit-time"] = f"h323-credit-time={CREDIT_TIME}"
                reply["Session-Timeout"] = CREDIT_TIME
        self.SendReplyPacket(pkt.fd, reply)

    def HandleAcctPacket(self, pkt):
        fields = []
        for key in pkt:
            name = key if isinstance(key, str) else str(key)
            fields.append(f"{name}={pkt[key]!r}")
        self.acct.write(" ".join(fields) + "\n")
        self.acct.flush()
        self.SendReplyPacket(pkt.fd, self.CreateReplyPacket(pkt))


def load_table(path: str) -> dict[str, str]:
    table = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2:
                table[fields[0]] = fields[1]
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pyrad_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", required=True, help="file of `CARD-NUMBER PIN` lines")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--acct-file", required=True)
    parser.add_argument("--auth-port", type=int, default=0)
    parser.add_argument("--acct-port", type=int, default=0)
    parser.add_argument("--ready-file", help="write the bound ports here as JSON once serving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    srv = CardServer(load_table(args.cards), args.secret.encode(), args.acct_file,
                     auth_port=args.auth_port, acct_port=args.acct_port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "auth_port": srv.auth_port, "acct_port": srv.acct_port}, f)
        os.replace(tmp, args.ready_file)
    try:
        srv.Run()
    finally:
        srv.acct.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
