"""Who may read the dashboard. Bound to a loopback address it needs no token (only this host's
users reach it) but answers only requests addressed to a loopback name, so a web page in the
operator's browser cannot read it through DNS rebinding. Bound anywhere else it needs a token,
from a file or the environment, sent as `Authorization: Bearer` or exchanged once at /login for
a cookie holding a digest of it (the token itself never sits in the browser or in a URL)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from utilitarian.errors import ConfigError

TOKEN_ENV = "UTILITARIAN_DASHBOARD_TOKEN"
CREDENTIAL = "dashboard-token"  # name of the systemd credential holding the token
COOKIE = "utilitarian_dashboard"
MIN_TOKEN = 16  # characters; a shorter token is guessable over a network
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(token_file: str | None, environ=os.environ) -> str | None:
    """The token from `token_file`, else from $UTILITARIAN_DASHBOARD_TOKEN, else from the systemd
    credential `dashboard-token` (LoadCredential=), else None. Errors name the file, never its content."""
    credential = os.path.join(environ.get("CREDENTIALS_DIRECTORY", ""), CREDENTIAL)
    if not token_file and not environ.get(TOKEN_ENV) and environ.get("CREDENTIALS_DIRECTORY") \
            and os.path.exists(credential):
        token_file = credential
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"dashboard token file {token_file}: {exc.strerror}") from None
        where = f"dashboard token file {token_file}"
    else:
        token = (environ.get(TOKEN_ENV) or "").strip()
        if not token:
            return None
        where = f"${TOKEN_ENV}"
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"{where}: the token is shorter than {MIN_TOKEN} characters "
                          "(make one with `openssl rand -hex 24`)")
    return token


@dataclass(frozen=True)
class Access:
    token: str | None
    loopback_only: bool  # no token: answer only requests addressed to a loopback name

    @classmethod
    def for_bind(cls, bind: str, token: str | None) -> "Access":
        if token is None and not is_loopback(bind):
            raise ConfigError(f"the dashboard bound to {bind} needs a token: --token-file PATH or ${TOKEN_ENV} "
                              "(without one it serves only 127.0.0.1)")
        return cls(token, token is None)

    def session_value(self) -> str:
        """The cookie's value: a digest of the token, useless as a bearer token elsewhere."""
        return hmac.new(self.token.encode(), b"utilitarian-dashboard-session", hashlib.sha256).hexdigest()

    def allows(self, headers) -> bool:
        """Whether a request with these headers may read the page and its data."""
        if self.token is None:
            return not self.loopback_only or host_is_loopback(headers.get("Host"))
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        cookie = cookie_value(headers.get("Cookie"))
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session_value().encode())

    def accepts(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.strip().encode(), self.token.encode())


def host_is_loopback(host: str | None) -> bool:
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_NAMES or (name.startswith("127.") and is_loopback(name))


def cookie_value(header: str | None) -> str | None:
    if not header:
        return None
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel else None
