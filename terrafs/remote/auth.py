"""Credentials for the download service, as requests auth objects.

Basic (username/password) or OIDC bearer tokens from the Terrascope Keycloak
realm: `TokenManager` owns the access token, its expiry, the refresh and the
one-renewal-at-a-time lock; `BearerAuth` puts the token on each request and
and renews the token after a 401 (the Downloader sends the request again). Also the device-code login and the refresh-token file.

Must not: log or put in any message, repr or exception a password, a token or an
Authorization header; read configuration files (config.py does); send token
requests through the download rate limiter (the token endpoint is another service).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from terrafs.errors import AuthError, FetchError

log = logging.getLogger(__name__)

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# Keycloak's default access-token lifetime; used when a response omits expires_in.
DEFAULT_EXPIRES_IN = 300.0
TOKEN_TIMEOUT = (10.0, 30.0)
# Connection errors and 5xx from the token endpoint are retried this many times.
TOKEN_RETRIES = 2


class BasicAuth(HTTPBasicAuth):
    """HTTP Basic auth whose repr does not show the password."""

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class AuthStats:
    renewals: int  # access tokens the token endpoint granted (metrics)


@dataclass(frozen=True)
class _Token:
    access: str
    expires_at: float
    refresh: str | None
    refresh_expires_at: float | None  # None: unknown or does not expire


def _describe_error(response: requests.Response) -> str:
    """Keycloak's error / error_description, or the status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        desc = body.get("error_description")
        return f"{body['error']}: {desc}" if desc else str(body["error"])
    return f"HTTP {response.status_code}"


def _scrub(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class TokenManager:
    """Access tokens from a Keycloak token endpoint, renewed before they expire.

    Renewal uses the refresh token and falls back to the password grant when the
    refresh token expired or was refused. One renewal runs at a time; threads
    that waited for it reuse its token.
    on_refresh_token is called with every new refresh token (to store a rotated one).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        refresh_token: str | None = None,
        session: requests.Session | None = None,
        early_renewal: float = 30.0,
        on_refresh_token: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (refresh_token or (username and password)):
            raise AuthError("bearer authentication needs a username and password or a stored refresh token")
        self.token_url = token_url
        self.client_id = client_id
        self.username = username
        self._password = password
        self._session = session or requests.Session()
        self.early_renewal = early_renewal
        self._on_refresh_token = on_refresh_token
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._initial_refresh = refresh_token
        self.renewals = 0  # token endpoint grants that succeeded; for logs and tests

    def __repr__(self) -> str:
        return (f"TokenManager(token_url={self.token_url!r}, client_id={self.client_id!r}, "
                f"username={self.username!r}, password=***, token=***)")

    def stats(self) -> AuthStats:
        # Bumped under the lock, read without it: a scrape must not wait for a token request in flight.
        return AuthStats(self.renewals)

    def access_token(self) -> str:
        """A valid access token, renewed first when it is (nearly) expired."""
        with self._lock:
            token = self._token
            if token is None or self._clock() >= token.expires_at:
                token = self._renew()
            return token.access

    def invalidate(self, token: str) -> None:
        """Forget `token` if it is still the current one (the server refused it)."""
        with self._lock:
            if self._token is not None and self._token.access == token:
                log.debug("access token invalidated after a 401")
                self._token = _Token("", 0.0, self._token.refresh, self._token.refresh_expires_at)

    def check(self) -> None:
        """Get a token now, so a mount fails at once on bad credentials."""
        self.access_token()

    # -- internals (called with the lock held) ------------------------------------

    def _renew(self) -> _Token:
        current = self._token
        refresh = current.refresh if current else self._initial_refresh
        refresh_expired = (current is not None and current.refresh_expires_at is not None
                           and self._clock() >= current.refresh_expires_at)
        if refresh and not refresh_expired:
            try:
                return self._grant("refresh_token", {"refresh_token": refresh})
            except AuthError as exc:
                if not (self.username and self._password):
                    raise AuthError(f"{exc}; log in again (`terrafs login`) or configure a password") from None
                log.info("refresh token refused (%s); using the password grant", exc)
        elif not (self.username and self._password):
            raise AuthError("the refresh token has expired and no password is configured; "
                            "log in again (`terrafs login`)")
        return self._grant("password", {"username": self.username, "password": self._password})

    def _grant(self, grant: str, fields: dict[str, Any]) -> _Token:
        data = {"grant_type": grant, "client_id": self.client_id, **fields}
        response = self._post(grant, data)
        if response.status_code != 200:
            what = _scrub(_describe_error(response), self._password, fields.get("refresh_token"))
            raise AuthError(f"the token endpoint refused the {grant} grant "
                            f"(client '{self.client_id}'): {what}")
        try:
            body = response.json()
            if not body["access_token"]:
                raise KeyError("access_token")
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"the token endpoint answered the {grant} grant without an access token") from None
        token = self._token_from(body, fields.get("refresh_token"))
        self._token = token
        self.renewals += 1
        log.debug("new access token (%s grant), valid %.0f s", grant, token.expires_at - self._clock())
        if token.refresh and token.refresh != fields.get("refresh_token") and self._on_refresh_token:
            try:
                self._on_refresh_token(token.refresh)
            except OSError as exc:
                log.warning("could not store the renewed refresh token: %s", exc)
        return token

    def _token_from(self, body: dict[str, Any], old_refresh: str | None) -> _Token:
        now = self._clock()
        lifetime = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
        # Short-lived tokens (tests use 2 s) would be "expired" at once with a 30 s margin.
        margin = min(self.early_renewal, lifetime / 2)
        refresh = body.get("refresh_token") or old_refresh or (self._token.refresh if self._token else None)
        refresh_life = body.get("refresh_expires_in")
        # Keycloak reports 0 for offline tokens, which do not expire on a clock.
        refresh_at = now + float(refresh_life) - 1.0 if refresh_life else None
        return _Token(str(body["access_token"]), now + lifetime - margin, refresh, refresh_at)

    def _post(self, grant: str, data: dict[str, Any]) -> requests.Response:
        last: str = ""
        for attempt in range(TOKEN_RETRIES + 1):
            try:
                response = self._session.post(self.token_url, data=data, timeout=TOKEN_TIMEOUT,
                                              headers={"Accept": "application/json"})
            except requests.RequestException as exc:
                last = type(exc).__name__
            else:
                if response.status_code < 500:
                    return response
                last = f"HTTP {response.status_code}"
            log.debug("token endpoint %s grant attempt %d failed: %s", grant, attempt + 1, last)
            time.sleep(0.5 * 2 ** attempt)
        raise FetchError(f"token endpoint {self.token_url} unreachable ({last})")


class BearerAuth(AuthBase):
    """Authorization: Bearer from a TokenManager.

    Auth only sets the header and renews: after a 401 the Downloader calls
    renew() with the response and sends the request again itself, through the
    same path as the first (the limiter, the counters, the retries).
    """

    def __init__(self, manager: TokenManager) -> None:
        self.manager = manager

    def __repr__(self) -> str:
        return f"BearerAuth(client_id={self.manager.client_id!r}, token=***)"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.manager.access_token()}"
        return r

    def renew(self, refused: requests.Response) -> bool:
        """The token this response refused is dead: the next request gets a fresh one. True if renewable."""
        sent = str(refused.request.headers.get("Authorization", "")) if refused.request is not None else ""
        if sent.startswith("Bearer "):
            self.manager.invalidate(sent[len("Bearer "):])
        log.debug("401 from the download service; the access token will be renewed")
        return True


# -- device-code login and the refresh-token file ----------------------------------


def device_login(
    token_url: str,
    device_url: str,
    client_id: str,
    *,
    session: requests.Session,
    prompt: Callable[[str], None],
    scope: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Run the OIDC device-code flow and return the refresh token."""
    data = {"client_id": client_id}
    if scope:
        data["scope"] = scope
    try:
        response = session.post(device_url, data=data, timeout=TOKEN_TIMEOUT)
    except requests.RequestException as exc:
        raise AuthError(f"device login: {device_url} unreachable ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise AuthError(f"device login refused for client '{client_id}': {_describe_error(response)}")
    try:
        start = response.json()
        device_code = start["device_code"]
    except (ValueError, KeyError, TypeError):
        raise AuthError("device login: the device endpoint answered without a device_code") from None
    if start.get("verification_uri_complete"):
        prompt(f"To log in, open {start['verification_uri_complete']} in a browser "
               f"(code {start.get('user_code', '')}).")
    else:
        prompt(f"To log in, open {start.get('verification_uri')} and enter the code {start.get('user_code')}.")
    # RFC 8628: 5 s when the server names no interval.
    interval = max(0.0, float(start["interval"])) if start.get("interval") is not None else 5.0
    deadline = clock() + float(start.get("expires_in") or 600)
    while clock() < deadline:
        sleep(interval)
        try:
            poll = session.post(token_url, timeout=TOKEN_TIMEOUT, data={
                "grant_type": DEVICE_CODE_GRANT, "device_code": device_code, "client_id": client_id})
        except requests.RequestException as exc:
            log.info("device login: polling the token endpoint failed (%s); trying again", type(exc).__name__)
            continue
        if poll.status_code == 200:
            refresh = poll.json().get("refresh_token")
            if not refresh:
                raise AuthError("device login: the token endpoint gave no refresh token")
            return str(refresh)
        error = _error_code(poll)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "expired_token":
            raise AuthError("device login: the code expired before the login was completed")
        raise AuthError(f"device login failed: {_describe_error(poll)}")
    raise AuthError("device login: the code expired before the login was completed")


def _error_code(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def save_refresh_token(path: Path, token: str) -> None:
    """Store a refresh token readable by its owner only, replacing any old one atomically."""
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    fd, tmp = tempfile.mkstemp(prefix=".refresh-", dir=path.parent)  # mkstemp creates 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_refresh_token(path: Path) -> str | None:
    """The stored refresh token, None when there is none; refuses a file others can read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, encoding="utf-8") as f:
        info = os.fstat(f.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthError(f"refusing the refresh-token file {path}: other users can access it "
                            f"(run: chmod 600 {path})")
        if info.st_uid != os.getuid():
            raise AuthError(f"refusing the refresh-token file {path}: it belongs to another user")
        token = f.read().strip()
    return token or None


def make_auth(
    auth_method: str,
    *,
    token_url: str | None = None,
    client_id: str = "public",
    username: str | None = None,
    password: str | None = None,
    refresh_token_file: Path | None = None,
    session: requests.Session | None = None,
    early_renewal: float = 30.0,
) -> AuthBase | None:
    """Basic or bearer auth from configuration values; None when no credentials at all.

    Bearer works from a password or from a stored refresh token alone (no password).
    """
    if auth_method == "basic":
        if not (username and password):
            return None
        return BasicAuth(username, password)
    if auth_method != "bearer":
        raise AuthError(f"unknown auth method {auth_method!r} (expected 'basic' or 'bearer')")
    if not token_url:
        raise AuthError("bearer authentication needs a token_url")
    refresh = load_refresh_token(refresh_token_file) if refresh_token_file else None
    if not (refresh or (username and password)):
        return None
    store = None
    if refresh_token_file is not None:
        target = Path(refresh_token_file)
        store = lambda token: save_refresh_token(target, token)  # noqa: E731
    manager = TokenManager(token_url, client_id, username=username, password=password,
                           refresh_token=refresh, session=session, early_renewal=early_renewal,
                           on_refresh_token=store)
    return BearerAuth(manager)
