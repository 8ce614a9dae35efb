"""The RADIUS codec radcore runs with: the Cython fast path when it is built, else the reference.

Both implementations export the same names, return equal results and raise the same classes with
the same `reason` (`radcore.errors`); `IMPLEMENTATION` says which one was picked ("cython" or
"python"), and the server logs it at startup.

Environment switches, read once at import (any non-empty value counts, as in setup.py):

- `RADCORE_NO_EXTENSIONS`: use the pure-Python reference (`radcore.packet`) even if the extension
  is built. It wins over the next switch.
- `RADCORE_REQUIRE_EXTENSIONS`: a `radcore._fastpath` that cannot be imported is an error instead of
  a silent fallback (CI sets it, so a broken build cannot pass as a pure one).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Literal

NO_EXTENSIONS = bool(os.environ.get("RADCORE_NO_EXTENSIONS"))
REQUIRE_EXTENSIONS = bool(os.environ.get("RADCORE_REQUIRE_EXTENSIONS"))

__all__ = (
    "IMPLEMENTATION", "Packet", "Request", "chap_matches", "decode", "decode_response", "encode",
    "encode_access_request", "encode_accounting_request", "encode_attributes", "encode_response",
    "encode_responses", "hide_password", "message_authenticator", "parse_batch", "parse_request",
    "request_authenticator", "response_authenticator", "unhide_password", "vsa_text",
)

IMPLEMENTATION: Literal["cython", "python"]

if TYPE_CHECKING:
    # Type checkers see the reference; at run time the names come from the module picked below.
    from .packet import (  # noqa: F401
        Packet, Request, chap_matches, decode, decode_response, encode, encode_access_request,
        encode_accounting_request, encode_attributes, encode_response, encode_responses,
        hide_password, message_authenticator, parse_batch, parse_request, request_authenticator,
        response_authenticator, unhide_password, vsa_text,
    )


def _pick():
    from . import packet

    if NO_EXTENSIONS:
        return packet, "python"
    try:
        from . import _fastpath
    except ImportError:  # pragma: no cover
        if REQUIRE_EXTENSIONS:
            raise
        return packet, "python"
    return _fastpath, "cython"


_module, IMPLEMENTATION = _pick()
globals().update({name: getattr(_module, name) for name in __all__ if name != "IMPLEMENTATION"})
del _module, _pick


def load_lane():
    """`radcore._lane`, the worker's C batch loop, or None where it is not built (not Linux, or
    `RADCORE_NO_EXTENSIONS`). With `RADCORE_REQUIRE_EXTENSIONS` a Linux build without it is an error."""
    if NO_EXTENSIONS:
        return None
    try:
        from . import _lane
    except ImportError:  # pragma: no cover
        if REQUIRE_EXTENSIONS and sys.platform.startswith("linux"):
            raise
        return None
    return _lane


def load_lane_cache():
    """`radcore._dupcache.DuplicateCache`, the duplicate cache `radcore._lane` needs: the same API
    as `radcore.dupcache.DuplicateCache`, with entries the lane can key from a sockaddr in C."""
    from ._dupcache import DuplicateCache

    return DuplicateCache
