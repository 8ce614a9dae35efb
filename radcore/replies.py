"""Reply attributes as each NAS vendor expects them.

Cisco's debit-card application and Quintum's Tenor read the same h323 VSAs, under their own vendor
ids, and disagree on details: Cisco wants `h323-credit-time=360`, Tenor takes a bare `360`; some
return codes differ. A `Profile` (see `radcore.config`) holds those choices, and this module is the
only place that turns a decision into attributes, so the business rules never think about vendors.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from . import dictionary as d

if TYPE_CHECKING:
    from .config import Profile

Attribute = tuple[int, bytes]

_U32 = (1 << 32) - 1


def format_amount(micro: int) -> str:
    """Micro-units as a decimal amount with two places, rounded down: never promise more than is there."""
    if micro < 0:
        return "-" + format_amount(-micro)
    cents = micro // 10_000
    return f"{cents // 100}.{cents % 100:02d}"


def _vsa(profile: Profile, vendor_type: int, value: str) -> Attribute:
    return _vsa_attribute(profile.vendor, profile.prefixed_values, vendor_type, value)


@lru_cache(maxsize=4096)
def _vsa_attribute(vendor: int, prefixed: bool, vendor_type: int, value: str) -> Attribute:
    """Most reply values repeat (return codes, currency, common amounts), so their bytes are cached."""
    if prefixed:
        value = f"{d.H323_NAMES[vendor_type]}={value}"
    return d.vsa_key(vendor, vendor_type), value.encode()


def return_code(profile: Profile, outcome: d.ReturnCode) -> int:
    return profile.return_codes.get(outcome.name.lower(), int(outcome))


def reject(profile: Profile, outcome: d.ReturnCode, message: str) -> list[Attribute]:
    """Access-Reject attributes: the vendor's return code and a Reply-Message for people reading logs."""
    attrs: list[Attribute] = []
    if profile.vendor:
        attrs.append(_vsa(profile, d.H323_RETURN_CODE, str(return_code(profile, outcome))))
    attrs.append((d.REPLY_MESSAGE, message.encode()[:253]))
    return attrs


def accept(profile: Profile, *, available: int, currency: str, credit_time: int | None = None,
           language: str = "", route: str = "") -> list[Attribute]:
    """Access-Accept attributes for card authentication (credit_time None) or number authorization."""
    attrs: list[Attribute] = []
    if profile.vendor:
        attrs.append(_vsa(profile, d.H323_RETURN_CODE, str(return_code(profile, d.ReturnCode.SUCCESS))))
        attrs.append(_vsa(profile, d.H323_CREDIT_AMOUNT, format_amount(available)))
        attrs.append(_vsa(profile, d.H323_CURRENCY, currency))
        attrs.append(_vsa(profile, d.H323_BILLING_MODEL, "1"))
        if language:
            attrs.append(_vsa(profile, d.H323_PREFERRED_LANG, language))
        if credit_time is not None and profile.send_credit_time:
            attrs.append(_vsa(profile, d.H323_CREDIT_TIME, str(credit_time)))
        if route and profile.routing_avpair:
            avpair = profile.routing_avpair.format(route=route).encode()
            attrs.append((d.vsa_key(profile.vendor, d.AVPAIR), avpair))
    if credit_time is not None and (profile.send_session_timeout or not profile.vendor):
        attrs.append((d.SESSION_TIMEOUT, min(credit_time, _U32).to_bytes(4, "big")))
    return attrs
