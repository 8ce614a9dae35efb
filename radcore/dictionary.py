"""RADIUS numbers radcore reads and writes: packet codes, attributes, vendors and h323 return codes.

Attribute keys are plain ints so both codecs can carry them without allocating per attribute:
a standard attribute is its type (1..255); a vendor attribute (RFC 2865 §5.26, the suggested
format: vendor-type, vendor-length, value) is `vsa_key(vendor, vendor_type)` = vendor << 8 | type,
which is always >= 256 because vendor ids are >= 1.
"""

from enum import IntEnum


class Code(IntEnum):
    """Packet codes (RFC 2865 §3, RFC 2866 §3, RFC 5997)."""

    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12
    STATUS_CLIENT = 13


#: Codes a server accepts from a client; everything else is dropped as `bad_code`.
REQUEST_CODES = frozenset({Code.ACCESS_REQUEST, Code.ACCOUNTING_REQUEST, Code.STATUS_SERVER})

HEADER_LENGTH = 20
MIN_PACKET_LENGTH = 20
MAX_PACKET_LENGTH = 4096
AUTHENTICATOR_LENGTH = 16

# --- Standard attributes (RFC 2865, 2866, 2869, 3579) -------------------------------------------
USER_NAME = 1
USER_PASSWORD = 2
CHAP_PASSWORD = 3
NAS_IP_ADDRESS = 4
NAS_PORT = 5
SERVICE_TYPE = 6
REPLY_MESSAGE = 18
STATE = 24
CLASS = 25
VENDOR_SPECIFIC = 26
SESSION_TIMEOUT = 27
CALLED_STATION_ID = 30
CALLING_STATION_ID = 31
NAS_IDENTIFIER = 32
PROXY_STATE = 33
ACCT_STATUS_TYPE = 40
ACCT_DELAY_TIME = 41
ACCT_SESSION_ID = 44
ACCT_SESSION_TIME = 46
ACCT_TERMINATE_CAUSE = 49
EVENT_TIMESTAMP = 55
CHAP_CHALLENGE = 60
NAS_PORT_TYPE = 61
MESSAGE_AUTHENTICATOR = 80
NAS_IPV6_ADDRESS = 95

# --- Vendors -------------------------------------------------------------------------------------
VENDOR_CISCO = 9
VENDOR_QUINTUM = 6618


def vsa_key(vendor: int, vendor_type: int) -> int:
    """The int key of a vendor attribute; see the module docstring."""
    return (vendor << 8) | vendor_type


def split_key(key: int) -> tuple[int, int]:
    """(vendor, type) of a key; vendor 0 means a standard attribute."""
    return (key >> 8, key & 0xFF) if key > 0xFF else (0, key)


# Vendor types shared by Cisco (9) and Quintum (6618): the Quintum dictionary reuses Cisco's numbers.
AVPAIR = 1
H323_REMOTE_ADDRESS = 23
H323_CONF_ID = 24
H323_SETUP_TIME = 25
H323_CALL_ORIGIN = 26
H323_CALL_TYPE = 27
H323_CONNECT_TIME = 28
H323_DISCONNECT_TIME = 29
H323_DISCONNECT_CAUSE = 30
H323_GW_ID = 33
H323_INCOMING_CONF_ID = 35
H323_CREDIT_AMOUNT = 101
H323_CREDIT_TIME = 102
H323_RETURN_CODE = 103
H323_PROMPT_ID = 104
H323_REDIRECT_NUMBER = 106
H323_PREFERRED_LANG = 107
H323_BILLING_MODEL = 109
H323_CURRENCY = 110
QUINTUM_TRUNKID_IN = 230
QUINTUM_TRUNKID_OUT = 231

#: The h323 VSA names as they appear prefixed in values (`h323-credit-time=360`), by vendor type.
H323_NAMES = {
    H323_REMOTE_ADDRESS: "h323-remote-address",
    H323_CONF_ID: "h323-conf-id",
    H323_SETUP_TIME: "h323-setup-time",
    H323_CALL_ORIGIN: "h323-call-origin",
    H323_CALL_TYPE: "h323-call-type",
    H323_CONNECT_TIME: "h323-connect-time",
    H323_DISCONNECT_TIME: "h323-disconnect-time",
    H323_DISCONNECT_CAUSE: "h323-disconnect-cause",
    H323_GW_ID: "h323-gw-id",
    H323_INCOMING_CONF_ID: "h323-incoming-conf-id",
    H323_CREDIT_AMOUNT: "h323-credit-amount",
    H323_CREDIT_TIME: "h323-credit-time",
    H323_RETURN_CODE: "h323-return-code",
    H323_PROMPT_ID: "h323-prompt-id",
    H323_REDIRECT_NUMBER: "h323-redirect-number",
    H323_PREFERRED_LANG: "h323-preferred-lang",
    H323_BILLING_MODEL: "h323-billing-model",
    H323_CURRENCY: "h323-currency",
}

STANDARD_NAMES = {
    USER_NAME: "User-Name",
    USER_PASSWORD: "User-Password",
    CHAP_PASSWORD: "CHAP-Password",
    NAS_IP_ADDRESS: "NAS-IP-Address",
    NAS_PORT: "NAS-Port",
    SERVICE_TYPE: "Service-Type",
    REPLY_MESSAGE: "Reply-Message",
    STATE: "State",
    CLASS: "Class",
    VENDOR_SPECIFIC: "Vendor-Specific",
    SESSION_TIMEOUT: "Session-Timeout",
    CALLED_STATION_ID: "Called-Station-Id",
    CALLING_STATION_ID: "Calling-Station-Id",
    NAS_IDENTIFIER: "NAS-Identifier",
    PROXY_STATE: "Proxy-State",
    ACCT_STATUS_TYPE: "Acct-Status-Type",
    ACCT_DELAY_TIME: "Acct-Delay-Time",
    ACCT_SESSION_ID: "Acct-Session-Id",
    ACCT_SESSION_TIME: "Acct-Session-Time",
    ACCT_TERMINATE_CAUSE: "Acct-Terminate-Cause",
    EVENT_TIMESTAMP: "Event-Timestamp",
    CHAP_CHALLENGE: "CHAP-Challenge",
    NAS_PORT_TYPE: "NAS-Port-Type",
    MESSAGE_AUTHENTICATOR: "Message-Authenticator",
    NAS_IPV6_ADDRESS: "NAS-IPv6-Address",
}

#: Attributes whose value is a 32-bit unsigned integer (RFC 2865 §5 "integer", "time").
INTEGER_ATTRIBUTES = frozenset({
    NAS_PORT, SERVICE_TYPE, SESSION_TIMEOUT, ACCT_STATUS_TYPE, ACCT_DELAY_TIME,
    ACCT_SESSION_TIME, ACCT_TERMINATE_CAUSE, EVENT_TIMESTAMP, NAS_PORT_TYPE,
})


def attribute_name(key: int) -> str:
    vendor, vtype = split_key(key)
    if vendor == 0:
        return STANDARD_NAMES.get(vtype, f"Attr-{vtype}")
    if vendor == VENDOR_CISCO and vtype == AVPAIR:
        return "Cisco-AVPair"
    if vendor == VENDOR_QUINTUM:
        if vtype == AVPAIR:
            return "Quintum-AVPair"
        if vtype == QUINTUM_TRUNKID_IN:
            return "Quintum-Trunkid-In"
        if vtype == QUINTUM_TRUNKID_OUT:
            return "Quintum-Trunkid-Out"
        if vtype in H323_NAMES:
            return "Quintum-" + H323_NAMES[vtype]
    if vendor == VENDOR_CISCO and vtype in H323_NAMES:
        return H323_NAMES[vtype]
    return f"Vendor-{vendor}-Attr-{vtype}"


class AcctStatus(IntEnum):
    """Acct-Status-Type values (RFC 2866 §5.1)."""

    START = 1
    STOP = 2
    INTERIM_UPDATE = 3
    ACCOUNTING_ON = 7
    ACCOUNTING_OFF = 8


class ReturnCode(IntEnum):
    """h323-return-code values of the Cisco debit-card application (Cisco numbering).

    A NAS profile maps each outcome to the number its vendor expects; Quintum differs on some.
    """

    SUCCESS = 0
    INVALID_ACCOUNT = 1
    INVALID_PASSWORD = 2
    ACCOUNT_IN_USE = 3
    ZERO_BALANCE = 4
    CARD_EXPIRED = 5
    CREDIT_LIMIT = 6
    USER_DENIED = 7
    SERVICE_UNAVAILABLE = 8
    CALLED_NUMBER_BLOCKED = 9
    RETRIES_EXCEEDED = 10
    INVALID_ARGUMENT = 11
    INSUFFICIENT_BALANCE = 12
    TOLL_FREE_BLOCKED = 13
    INVALID_CARD_NUMBER = 14
