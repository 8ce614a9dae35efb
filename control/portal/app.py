"""The card-holder portal as a Starlette app: HTTP in, `control.portal.statement` decides, Jinja2 out.

Routes (everything else is a 404 page):

    GET  /                 to the statement when logged in, else to the login page
    GET  /login            the login form (sets the pre-session cookie that carries its CSRF nonce)
    POST /login            card number + PIN; rate-limited per client address
    GET  /statement        the card and one page of calls, ?from=YYYY-MM-DD&to=YYYY-MM-DD&page=N
    GET  /statement.csv    the period's calls as CSV
    POST /logout           ends the session, and every copy of its cookie
    GET  /static/...       the stylesheet

The card always comes from the signed session cookie. No route takes a card number, and any card
parameter someone adds to a URL is ignored, so one holder cannot name another's card.

LMDB calls run in Starlette's thread pool: a write (a failed-PIN count) can wait for the write lock
behind a RADIUS batch's fsync, and the event loop must not stall meanwhile.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from control.portal import security
from control.portal.security import PRE_SESSION_COOKIE, SESSION_COOKIE, RateLimiter, Session, Sessions
from control.portal.statement import (PAGE_SIZE, Holder, Outcome, authenticate, build_statement, calls_csv,
                                      csv_filename, load_holder, parse_period, sign_out)
from radcore.clock import Clock
from radcore.config import Config
from radcore.errors import StoreError
from radcore.keys import KeyRing
from radcore.store import Store

log = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
#: One message for every refused login, so the page never tells a guesser which part was wrong or
#: whether the card exists; the hint covers the lockout without confirming it.
LOGIN_REFUSED = ("We could not sign you in with that card number and PIN. Check both and try again. "
                 "After several wrong PINs a card is locked for a while.")
FORM_EXPIRED = "This form has expired. Please enter your card number and PIN again."
MAX_NUMBER_LENGTH = 32
MAX_PIN_LENGTH = 64


class Portal:
    """The request handlers and what they share; `create_app` wires them to routes."""

    def __init__(self, store: Store, keyring: KeyRing, config: Config, *, clock: Clock, secret: bytes,
                 secure_cookies: bool, page_size: int, login_attempts: int, login_window: int):
        self.store = store
        self.keyring = keyring
        self.config = config
        self.clock = clock
        self.sessions = Sessions(secret, clock)
        self.limiter = RateLimiter(clock, limit=login_attempts, window=login_window)
        self.secure_cookies = secure_cookies
        self.page_size = page_size
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    # -- helpers -------------------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = self.templates.get_template(name).render(root=root, holder=context.pop("holder", None),
                                                        **context)
        return HTMLResponse(html, status_code=status)

    def redirect(self, request: Request, path: str) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + path, status_code=303)

    def set_cookie(self, request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                            secure=self.secure_cookies or request.url.scheme == "https")

    def clear_cookie(self, request: Request, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", httponly=True, samesite="strict",
                               secure=self.secure_cookies or request.url.scheme == "https")

    @staticmethod
    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    async def holder(self, request: Request) -> tuple[Session, Holder] | None:
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        holder = await run_in_threadpool(load_holder, self.store, session.card_key, session.epoch)
        return None if holder is None else (session, holder)

    def signed_out(self, request: Request) -> Response:
        response = self.redirect(request, "/login")
        if SESSION_COOKIE in request.cookies:
            self.clear_cookie(request, response, SESSION_COOKIE)
        return response

    # -- login ---------------------------------------------------------------------------------------

    def login_page(self, request: Request, *, status: int = 200, error: str = "", number: str = "",
                   notice: str = "", nonce: str | None = None) -> Response:
        """The form; a new pre-session cookie when the browser has no valid one."""
        value = None
        if nonce is None:
            nonce = self.sessions.read_pre_session(request.cookies.get(PRE_SESSION_COOKIE))
        if nonce is None:
            value, nonce = self.sessions.new_pre_session()
        response = self.render(request, "login.html", status, error=error, number=number, notice=notice,
                               csrf=self.sessions.csrf_token(nonce))
        if value is not None:
            self.set_cookie(request, response, PRE_SESSION_COOKIE, value, self.sessions.pre_session_seconds)
        return response

    async def home(self, request: Request) -> Response:
        found = await self.holder(request)
        return self.redirect(request, "/statement" if found else "/login")

    async def login_form(self, request: Request) -> Response:
        if await self.holder(request):
            return self.redirect(request, "/statement")
        notice = "You have signed out." if request.query_params.get("signed_out") == "1" else ""
        return self.login_page(request, notice=notice)

    async def login(self, request: Request) -> Response:
        client = self.client(request)
        wait = self.limiter.retry_after(client)
        if wait:
            log.warning("portal: login attempts from %s rate-limited for %d s", client, wait)
            response = self.render(request, "error.html", 429, title="Too many attempts",
                                   message="There have been too many unsuccessful sign-in attempts from "
                                           f"your network. Please wait {_wait_text(wait)} and try again.")
            response.headers["Retry-After"] = str(wait)
            return response
        form = await read_form(request)
        nonce = self.sessions.read_pre_session(request.cookies.get(PRE_SESSION_COOKIE))
        if not self.sessions.csrf_ok(form.get("csrf"), nonce):
            # No credential check without a valid token: a cross-site page cannot submit logins.
            value, fresh = self.sessions.new_pre_session()
            response = self.login_page(request, status=403, error=FORM_EXPIRED, nonce=fresh)
            self.set_cookie(request, response, PRE_SESSION_COOKIE, value, self.sessions.pre_session_seconds)
            return response
        number = form.get("card_number")
        pin = form.get("pin")
        number = number.strip() if isinstance(number, str) else ""
        pin = pin.strip() if isinstance(pin, str) else ""
        if not number or not pin or len(number) > MAX_NUMBER_LENGTH or len(pin) > MAX_PIN_LENGTH:
            result = None
        else:
            result = await run_in_threadpool(authenticate, self.store, self.keyring, self.config.prepaid,
                                              number, pin, now=int(self.clock()), client=client)
        if result is None or not result.ok:
            self.limiter.hit(client)
            outcome = result.outcome if result is not None else Outcome.UNKNOWN
            # The typed number is logged only when it names a real card: someone who typed the PIN
            # into the number field must not find it in the log.
            log.info("portal: login refused from %s: %s%s", client, outcome.value,
                     f" (card {result.number})" if result is not None and result.number else "")
            shown = number if len(number) <= MAX_NUMBER_LENGTH else ""
            return self.login_page(request, error=LOGIN_REFUSED, number=shown, nonce=nonce)
        assert result.card_key is not None
        value, _ = self.sessions.issue(result.card_key, result.sessions_epoch)
        response = self.redirect(request, "/statement")
        self.set_cookie(request, response, SESSION_COOKIE, value, self.sessions.idle)
        self.clear_cookie(request, response, PRE_SESSION_COOKIE)
        log.info("portal: card %s signed in from %s", result.number, client)
        return response

    async def logout(self, request: Request) -> Response:
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return self.signed_out(request)
        form = await read_form(request)
        if not self.sessions.csrf_ok(form.get("csrf"), session.nonce):
            return self.render(request, "error.html", 403, title="Request refused",
                               message="This page had expired. Go back to your statement and try again.")
        # Server-side too: a copy of this cookie (another tab, a shared computer's profile, a
        # stolen one) stops working now, not when it would have expired.
        await run_in_threadpool(sign_out, self.store, session.card_key)
        response = self.redirect(request, "/login?signed_out=1")
        self.clear_cookie(request, response, SESSION_COOKIE)
        return response

    # -- the statement -------------------------------------------------------------------------------

    async def statement(self, request: Request) -> Response:
        found = await self.holder(request)
        if found is None:
            return self.signed_out(request)
        session, holder = found
        params = request.query_params
        period, period_error = parse_period(params.get("from", ""), params.get("to", ""))
        page = params.get("page", "1")
        page_no = int(page) if page.isascii() and page.isdigit() and len(page) < 7 else 1
        st = await run_in_threadpool(build_statement, self.store, holder, period, page=page_no,
                                     page_size=self.page_size)
        query = period.query

        def link(**extra: object) -> str:
            merged = {**query, **{k: str(v) for k, v in extra.items()}}
            return "?" + urlencode(merged) if merged else ""

        response = self.render(request, "statement.html", holder=holder, st=st, period_error=period_error,
                               from_value=query.get("from", ""), to_value=query.get("to", ""),
                               link=link, csrf=self.sessions.csrf_token(session.nonce))
        # Re-signing slides the idle timeout while the holder is active.
        self.set_cookie(request, response, SESSION_COOKIE, self.sessions.dump(session), self.sessions.idle)
        return response

    async def statement_csv(self, request: Request) -> Response:
        found = await self.holder(request)
        if found is None:
            return self.signed_out(request)
        _, holder = found
        period, _ = parse_period(request.query_params.get("from", ""), request.query_params.get("to", ""))
        text = await run_in_threadpool(calls_csv, self.store, holder, period)
        return Response(text, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{csv_filename(holder, period)}"'})

    # -- errors --------------------------------------------------------------------------------------

    async def http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        titles = {400: ("Bad request", "The request could not be read."),
                  404: ("Page not found", "There is no such page. Your statement is on the home page."),
                  405: ("Not allowed", "That page cannot be used this way.")}
        title, message = titles.get(status, ("Something went wrong", "Please try again in a moment."))
        return self.render(request, "error.html", status, title=title, message=message)

    async def unavailable(self, request: Request, exc: Exception) -> Response:
        """The store failed (disk full, map full, closed): a plain 503 page, not a traceback. Handled
        inside the middleware stack, unlike a bare 500, so the page keeps the security headers."""
        log.error("portal: store error serving %s: %s", request.url.path, exc)
        return self.render(request, "error.html", 503, title="Temporarily unavailable",
                           message="Your account cannot be shown right now. Please try again in a few minutes.")

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.exception("portal: error serving %s", request.url.path, exc_info=exc)
        return self.render(request, "error.html", 500, title="Something went wrong",
                           message="Please try again in a moment.")


async def read_form(request: Request) -> FormData:
    """The posted fields, bounded: our forms have three small fields and no files, so anything
    bigger is refused by the parser (Starlette turns its errors into a 400) before it is buffered."""
    return await request.form(max_files=0, max_fields=10, max_part_size=4096)


def _wait_text(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def create_app(store: Store, keyring: KeyRing, config: Config, *, clock: Clock, secret: bytes | None = None,
               secure_cookies: bool = False, page_size: int = PAGE_SIZE, login_attempts: int = 10,
               login_window: int = 60) -> Starlette:
    """The portal as an ASGI app over an open store (opened in this process, after any fork).

    `secret` defaults to `security.load_or_create_secret(config)`. Cookies get the Secure flag on
    requests that arrived over HTTPS, or always with `secure_cookies` (set it when a TLS-terminating
    proxy sits in front). `login_attempts` failed logins per `login_window` seconds per address.
    """
    portal = Portal(store, keyring, config, clock=clock,
                    secret=secret if secret is not None else security.load_or_create_secret(config),
                    secure_cookies=secure_cookies, page_size=page_size, login_attempts=login_attempts,
                    login_window=login_window)
    routes = [
        Route("/", portal.home, methods=["GET"]),
        Route("/login", portal.login_form, methods=["GET"]),
        Route("/login", portal.login, methods=["POST"]),
        Route("/statement", portal.statement, methods=["GET"]),
        Route("/statement.csv", portal.statement_csv, methods=["GET"]),
        Route("/logout", portal.logout, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: portal.http_error,
                                                       StoreError: portal.unavailable,
                                                       Exception: portal.server_error})
    app.add_middleware(security.SecurityHeaders)
    app.state.portal = portal
    return app
