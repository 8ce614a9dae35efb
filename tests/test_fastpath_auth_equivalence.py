"""The small functions, Cython fast path against the reference: password hiding and unhiding, CHAP,
the Request, Response and Message-Authenticator computations, and `vsa_text`.

Random secrets, authenticators, blobs and offsets, including wrong sizes: both implementations return
the same result or raise the same exception class.
"""

from __future__ import annotations

import random

import pytest

from radcore import dictionary as d
from radcore import packet

from helpers_codec import SEED, load_fastpath, outcome


@pytest.fixture(scope="module")
def cy():
    """The compiled module; skipped without it, a failure under RADCORE_REQUIRE_EXTENSIONS."""
    return load_fastpath()


def test_small_functions_equivalent(cy):
    rng = random.Random(SEED + 4)
    for _ in range(2000):
        secret, auth = rng.randbytes(rng.randrange(0, 80)), rng.randbytes(rng.choice([16, 16, 0, 15, 20]))
        blob = rng.randbytes(rng.choice([0, 1, 15, 16, 17, 32, 128, 144, rng.randrange(0, 300)]))
        offset = rng.choice([20, 22, rng.randrange(-5, len(blob) + 5), len(blob) - 16])
        vtype = rng.choice([*d.H323_NAMES, 0, 999])
        text = rng.choice([blob, d.H323_NAMES.get(vtype, "x").encode() + b"=" + blob])
        for name, args in [
            ("hide_password", (blob[:rng.randrange(0, 130)], secret, auth)),
            ("unhide_password", (blob, secret, auth)),
            ("chap_matches", (blob[:17], auth, secret)),
            ("request_authenticator", (blob, secret)),
            ("response_authenticator", (blob, auth, secret)),
            ("message_authenticator", (blob, secret, auth, offset)),
            ("vsa_text", (text, vtype)),
        ]:
            assert outcome(getattr(cy, name), *args) == outcome(getattr(packet, name), *args), (name, args)
