"""The exception tree shared by both codec implementations and the store.

The reference codec (`radcore.packet`) and the Cython fast path (`radcore._fastpath`) raise the same
classes with the same `reason` strings, so callers and the cross-check tests never care which one ran.
The server turns every `PacketError` into a silent drop counted under its `reason`.
"""


class RadcoreError(Exception):
    """Base of everything radcore raises on purpose."""


class PacketError(RadcoreError):
    """A datagram that is not a valid RADIUS packet. `reason` is a short, stable counter label."""

    reason = "malformed"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class AuthenticatorError(PacketError):
    """Request or Response Authenticator does not match the shared secret (RFC 2865 §3, RFC 2866 §3)."""

    reason = "bad_authenticator"


class MessageAuthenticatorError(PacketError):
    """Message-Authenticator missing where required, malformed, or wrong (RFC 3579 §3.2)."""

    reason = "bad_message_authenticator"


class ConfigError(RadcoreError):
    """The configuration file is unusable; the message names the file, the key and the problem."""


class StoreError(RadcoreError):
    """LMDB failed underneath us (map full, disk full, version mismatch); wraps the lmdb exception."""


class NotFound(RadcoreError):
    """A named object (series, card, rate table, ...) does not exist or is not visible to the caller."""


class Invalid(RadcoreError):
    """Input that breaks a rule. `field` names the offending field for the gRPC status message."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class InsufficientBalance(RadcoreError):
    """A change would take a card's balance below what it is allowed to be."""


class Conflict(RadcoreError):
    """The object already exists (series number taken, token id reused)."""
