"""The portal's web security: the signing secret, session and CSRF tokens, the login rate limiter and
the response headers.

Sessions are stateless signed cookies (itsdangerous), so any control process holding the same secret
can serve any holder, and nothing about a session is written to LMDB but the card's sign-out count
(`control.portal.statement.sign_out`), which ends every copy of a cookie at once. A session carries
only the card key, the login time, that count and a random CSRF nonce; never the PIN. Signatures
are timestamped with the portal's injected clock, so expiry follows the same time source as the
rest of radcore (and tests can move it). Two limits apply: idle (the cookie is re-signed on every page, so an active holder
stays in) and absolute (from the login time inside the payload, so a stolen cookie does not live
forever by being used).

CSRF: every form carries a signed copy of a nonce that lives inside a signed cookie; a POST must
present both and they must match. Before login there is no session yet, so the login form uses a
short-lived pre-session cookie for its nonce (this stops login CSRF: a third-party page cannot
log the victim's browser into the attacker's card). Cookies are HttpOnly and SameSite=Strict as
well, which alone would stop most cross-site POSTs; the tokens do not rely on that.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from starlette.datastructures import MutableHeaders

from radcore.clock import Clock
from radcore.config import Config
from radcore.errors import ConfigError

SECRET_SIZE = 32
SECRET_FILE_NAME = "portal.secret"
SESSION_COOKIE = "radcore_session"
PRE_SESSION_COOKIE = "radcore_login"
IDLE_SECONDS = 30 * 60
LIFETIME_SECONDS = 12 * 3600
PRE_SESSION_SECONDS = 2 * 3600

#: No inline script or style anywhere: the pages work without JavaScript, and the stylesheet is a
#: file. `form-action 'self'` keeps an injected form from posting PINs elsewhere.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()"),
)


# --- the secret -------------------------------------------------------------------------------------

def load_or_create_secret(config: Config) -> bytes:
    """The signing key: `control.portal_secret_file` if set (it must exist: several control
    processes behind one address must share it, so silently inventing one would log holders out
    at random), else `<data_dir>/portal.secret`, created on first use.

    A created secret is 32 random bytes written as hex text: the reader strips surrounding
    whitespace (operators create these files with `echo`), which would eat raw random bytes."""
    configured = config.control.portal_secret_file
    if configured:
        try:
            return _read_secret(configured)
        except FileNotFoundError:
            raise ConfigError(f"control.portal_secret_file {configured} does not exist; create it with "
                              f"at least {SECRET_SIZE} random bytes and mode 0600") from None
    path = os.path.join(config.server.data_dir, SECRET_FILE_NAME)
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    os.makedirs(config.server.data_dir, mode=0o700, exist_ok=True)
    secret = secrets.token_hex(SECRET_SIZE).encode()
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() never replaces: if another process created the file first, use its secret.
        os.link(tmp, path)
    except FileExistsError:
        return _read_secret(path)
    finally:
        os.unlink(tmp)
    return secret


def _read_secret(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigError(f"cannot open portal secret {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"portal secret {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(f"portal secret {path} has mode {stat.S_IMODE(st.st_mode):04o}; anyone who "
                              f"reads it can forge sessions: chmod 600 {path}")
        raw = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(raw) < SECRET_SIZE:
        raise ConfigError(f"portal secret {path} holds {len(raw)} bytes; it needs at least {SECRET_SIZE}")
    return raw


# --- sessions and CSRF ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Session:
    card_key: bytes
    login_at: int
    nonce: str  # the CSRF nonce of this session
    epoch: int = 0  # the card's sign-out count when it was issued


class Sessions:
    """Signs and checks session cookies, pre-session cookies and CSRF tokens.

    Each kind has its own salt, so a value of one kind is never accepted as another (a CSRF token
    cannot be replayed as a session cookie).
    """

    def __init__(self, secret: bytes, clock: Clock, *, idle: int = IDLE_SECONDS,
                 lifetime: int = LIFETIME_SECONDS, pre_session: int = PRE_SESSION_SECONDS):
        class _ClockSigner(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

        def serializer(salt: str) -> URLSafeTimedSerializer:
            return URLSafeTimedSerializer(secret, salt=salt, signer=_ClockSigner)

        self.clock = clock
        self.idle = idle
        self.lifetime = lifetime
        self.pre_session_seconds = pre_session
        self._session = serializer("radcore.portal.session")
        self._pre = serializer("radcore.portal.pre-session")
        self._csrf = serializer("radcore.portal.csrf")

    def issue(self, card_key: bytes, epoch: int) -> tuple[str, Session]:
        """A new session with a fresh nonce: logging in never reuses the pre-session's nonce."""
        session = Session(card_key, int(self.clock()), secrets.token_urlsafe(18), epoch)
        return self.dump(session), session

    def dump(self, session: Session) -> str:
        return self._session.dumps({"k": session.card_key.hex(), "t": session.login_at, "c": session.nonce,
                                    "e": session.epoch})

    def read(self, value: str | None) -> Session | None:
        """The session in a cookie, or None if it is missing, forged, idle too long or too old."""
        doc = self._load(self._session, value, self.idle)
        try:
            session = Session(bytes.fromhex(doc["k"]), int(doc["t"]), str(doc["c"]), int(doc.get("e", 0)))
        except (TypeError, KeyError, ValueError):
            return None
        if len(session.card_key) != 8 or int(self.clock()) - session.login_at > self.lifetime:
            return None
        return session

    def new_pre_session(self) -> tuple[str, str]:
        nonce = secrets.token_urlsafe(18)
        return self._pre.dumps({"c": nonce}), nonce

    def read_pre_session(self, value: str | None) -> str | None:
        doc = self._load(self._pre, value, self.pre_session_seconds)
        nonce = doc.get("c") if isinstance(doc, dict) else None
        return nonce if isinstance(nonce, str) and nonce else None

    def csrf_token(self, nonce: str) -> str:
        return self._csrf.dumps(nonce)

    def csrf_ok(self, token: Any, nonce: str | None) -> bool:
        """The form's token is ours, not expired, and made for this cookie's nonce."""
        if not nonce or not isinstance(token, str) or len(token) > 512:
            return False
        found = self._load(self._csrf, token, max(self.idle, self.pre_session_seconds))
        return isinstance(found, str) and hmac.compare_digest(found.encode(), nonce.encode())

    @staticmethod
    def _load(serializer: URLSafeTimedSerializer, value: str | None, max_age: int) -> Any:
        if not value or len(value) > 4096:
            return {}
        try:
            return serializer.loads(value, max_age=max_age)
        except (BadSignature, ValueError, TypeError):
            return {}


# --- login rate limiting ----------------------------------------------------------------------------

class RateLimiter:
    """Failed logins per client address in a sliding window (default: 10 a minute).

    In memory, per process: it slows one address down; the per-card lockout (in LMDB, shared with
    RADIUS) is what bounds guessing against a card from many addresses. At most `max_clients`
    addresses are tracked; past that, idle ones are forgotten first and then the oldest, so a flood
    of spoofed sources costs memory up to a bound, not without one.
    """

    def __init__(self, clock: Clock, *, limit: int = 10, window: int = 60, max_clients: int = 10_000):
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._hits: dict[str, deque[int]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 = it may try now."""
        now = int(self.clock())
        with self._lock:
            hits = self._hits.get(client)
            if hits is None:
                return 0
            self._prune(hits, now)
            if not hits:
                del self._hits[client]
                return 0
            if len(hits) < self.limit:
                return 0
            return max(1, hits[0] + self.window - now)

    def hit(self, client: str) -> None:
        """Count one failed login."""
        now = int(self.clock())
        with self._lock:
            hits = self._hits.get(client)
            if hits is None:
                if len(self._hits) >= self.max_clients:
                    self._evict(now)
                hits = self._hits[client] = deque()
            self._prune(hits, now)
            hits.append(now)
            while len(hits) > self.limit:
                hits.popleft()

    def _prune(self, hits: deque[int], now: int) -> None:
        while hits and hits[0] <= now - self.window:
            hits.popleft()

    def _evict(self, now: int) -> None:
        for client in [c for c, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]:
            del self._hits[client]
        while len(self._hits) >= self.max_clients:
            del self._hits[next(iter(self._hits))]


# --- response headers -------------------------------------------------------------------------------

class SecurityHeaders:
    """ASGI middleware: the security headers on every response, and `Cache-Control: no-store` on
    everything except the stylesheet, so no statement, CSRF token or CSV lands in a shared cache
    or the browser's back-forward history after logout.

    Plain ASGI rather than BaseHTTPMiddleware, which would buffer streamed responses.
    """

    def __init__(self, app: Any, *, static_prefix: str = "/static/"):
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith(self.static_prefix)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers[name] = value
                if not static:
                    headers["Cache-Control"] = "no-store"
                elif "cache-control" not in headers:
                    headers["Cache-Control"] = "public, max-age=3600"
            await send(message)

        await self.app(scope, receive, send_with_headers)
