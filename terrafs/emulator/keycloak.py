"""A small Keycloak look-alike for the emulator: realm `terrascope` with the
token endpoint (password, refresh_token and device_code grants), the device
authorization endpoint, an HTML login page and the discovery document.

It issues opaque-but-JWT-looking tokens (header.payload.signature, unsigned)
and remembers them, so the download service can check a Bearer token by
lookup. It must not log or echo a password or a token.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from terrafs.emulator.settings import EmulatorSettings

log = logging.getLogger(__name__)

REALM_PATH = "/auth/realms/terrascope"
CLIENTS = frozenset({"public", "terracatalogueclient"})
DEVICE_CLIENTS = frozenset({"public", "terracatalogueclient"})
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_CODE_LIFETIME = 600.0
SCOPE = "profile email"


class KeycloakError(Exception):
    """An OAuth error answer: status, error code and description."""

    def __init__(self, status: int, error: str, description: str | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True)
class _Token:
    user: str
    client_id: str
    issued: float
    expires: float
    session_state: str


@dataclass
class _Device:
    client_id: str
    user_code: str
    expires: float
    user: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenStore:
    """Every live access and refresh token the emulator issued, and pending
    device authorisations. Thread-safe."""

    def __init__(self, settings: EmulatorSettings):
        self._settings = settings
        self._lock = threading.Lock()
        self._access: dict[str, _Token] = {}
        self._refresh: dict[str, _Token] = {}
        self._devices: dict[str, _Device] = {}  # by device_code
        self._issued: list[str] = []  # every token minted, for the tests' leak checks

    # -- tokens ---------------------------------------------------------------

    def _mint(self, issuer: str, typ: str, tok: _Token) -> str:
        header = {"alg": "none", "typ": "JWT", "kid": "terrafs-emulator"}
        payload = {
            "exp": int(tok.expires), "iat": int(tok.issued), "jti": secrets.token_hex(16),
            "iss": issuer, "aud": "account", "sub": f"user-{tok.user}", "typ": typ,
            "azp": tok.client_id, "session_state": tok.session_state,
            "realm_access": {"roles": ["offline_access", "uma_authorization"]},
            "scope": SCOPE, "preferred_username": tok.user,
        }
        # The random "signature" makes every token unique and unguessable.
        return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()),
                         _b64(secrets.token_bytes(32))])

    def issue(self, user: str, client_id: str, issuer: str, session_state: str | None = None) -> dict:
        """A Keycloak-shaped token response for a fresh access + refresh pair."""
        now = time.time()
        s = self._settings
        session_state = session_state or secrets.token_hex(16)
        acc = _Token(user, client_id, now, now + s.access_token_lifetime, session_state)
        ref = _Token(user, client_id, now, now + s.refresh_token_lifetime, session_state)
        access, refresh = self._mint(issuer, "Bearer", acc), self._mint(issuer, "Refresh", ref)
        with self._lock:
            self._prune(now)
            self._access[access] = acc
            self._refresh[refresh] = ref
            self._issued += [access, refresh]
        return {
            "access_token": access, "expires_in": int(s.access_token_lifetime),
            "refresh_expires_in": int(s.refresh_token_lifetime), "refresh_token": refresh,
            "token_type": "Bearer", "not-before-policy": 0, "session_state": session_state,
            "scope": SCOPE,
        }

    def _live(self, tok: _Token | None, now: float) -> bool:
        return tok is not None and tok.expires > now and tok.issued >= self._settings.tokens_not_before

    def _prune(self, now: float) -> None:
        for table in (self._access, self._refresh):
            for key in [k for k, t in table.items() if t.expires <= now]:
                del table[key]
        for key in [k for k, d in self._devices.items() if d.expires <= now]:
            del self._devices[key]

    def issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def user_for_access(self, token: str) -> str | None:
        """The user of a live access token, or None (unknown, expired, revoked)."""
        with self._lock:
            tok = self._access.get(token)
        return tok.user if self._live(tok, time.time()) else None

    def refresh(self, refresh_token: str, client_id: str, issuer: str) -> dict:
        """Rotate: the old refresh token dies, a new pair is issued."""
        now = time.time()
        with self._lock:
            tok = self._refresh.get(refresh_token)
            if not self._live(tok, now):
                raise KeycloakError(400, "invalid_grant", "Token is not active")
            assert tok is not None
            if tok.client_id != client_id:
                raise KeycloakError(400, "invalid_grant", "Invalid refresh token. Token client and authorized client don't match")
            del self._refresh[refresh_token]
        return self.issue(tok.user, client_id, issuer, tok.session_state)

    # -- device flow ----------------------------------------------------------

    def device_start(self, client_id: str) -> tuple[str, str, float]:
        """(device_code, user_code, lifetime) of a new pending authorisation."""
        device_code = secrets.token_urlsafe(32)
        letters = "BCDFGHJKLMNPQRSTVWXZ"
        raw = "".join(secrets.choice(letters) for _ in range(8))
        user_code = f"{raw[:4]}-{raw[4:]}"
        with self._lock:
            self._devices[device_code] = _Device(client_id, user_code, time.time() + DEVICE_CODE_LIFETIME)
        return device_code, user_code, DEVICE_CODE_LIFETIME

    def device_approve(self, user_code: str, user: str) -> bool:
        want = user_code.strip().upper().replace(" ", "")
        with self._lock:
            for dev in self._devices.values():
                if dev.user_code.replace("-", "") == want.replace("-", "") and dev.expires > time.time():
                    dev.user = user
                    return True
        return False

    def device_poll(self, device_code: str, client_id: str, issuer: str) -> dict:
        with self._lock:
            dev = self._devices.get(device_code)
            if dev is None or dev.client_id != client_id:
                raise KeycloakError(400, "invalid_grant", "Device code not valid")
            if dev.expires <= time.time():
                del self._devices[device_code]
                raise KeycloakError(400, "expired_token", "Device code is expired")
            if dev.user is None:
                raise KeycloakError(400, "authorization_pending", "The authorization request is still pending")
            del self._devices[device_code]
            user = dev.user
        return self.issue(user, client_id, issuer)

    def clear(self) -> None:
        with self._lock:
            self._access.clear()
            self._refresh.clear()
            self._devices.clear()


# -- HTTP ---------------------------------------------------------------------


def _json(body: dict, status: int = 200) -> Response:
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def _error(err: KeycloakError) -> Response:
    body = {"error": err.error}
    if err.description:
        body["error_description"] = err.description
    return _json(body, err.status)


def discovery(issuer: str) -> dict:
    oidc = issuer + "/protocol/openid-connect"
    return {
        "issuer": issuer,
        "authorization_endpoint": oidc + "/auth",
        "token_endpoint": oidc + "/token",
        "device_authorization_endpoint": oidc + "/auth/device",
        "userinfo_endpoint": oidc + "/userinfo",
        "jwks_uri": oidc + "/certs",
        "grant_types_supported": ["authorization_code", "implicit", "refresh_token", "password",
                                  "client_credentials", DEVICE_GRANT],
        "response_types_supported": ["code", "none", "id_token", "token", "id_token token", "code id_token",
                                     "code token", "code id_token token"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic",
                                                  "client_secret_post", "client_secret_jwt"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "code_challenge_methods_supported": ["plain", "S256"],
    }


def _client_id(request: Request) -> str | None:
    """client_id from the form, else from client Basic auth (RFC 6749 §2.3.1)."""
    cid = request.form.get("client_id")
    if cid:
        return cid
    auth = request.authorization
    if auth is not None and auth.type == "basic" and auth.username:
        return auth.username
    return None


def _token_endpoint(request: Request, store: TokenStore, settings: EmulatorSettings, issuer: str) -> Response:
    if request.method != "POST":
        return _json({"error": "RESTEASY003650: No resource method found for GET, return 405 with Allow header"}, 405)
    form = request.form
    grant = form.get("grant_type")
    if not grant:
        raise KeycloakError(400, "invalid_request", "Missing form parameter: grant_type")
    client_id = _client_id(request)
    if client_id is None or client_id not in CLIENTS:
        raise KeycloakError(401, "invalid_client", "Invalid client or Invalid client credentials")
    if grant == "password":
        user, password = form.get("username", ""), form.get("password", "")
        users = settings.users
        if not user or users.get(user) is None or not secrets.compare_digest(users[user].encode(), password.encode()):
            raise KeycloakError(401, "invalid_grant", "Invalid user credentials")
        return _json(store.issue(user, client_id, issuer))
    if grant == "refresh_token":
        token = form.get("refresh_token")
        if not token:
            raise KeycloakError(400, "invalid_request", "Missing form parameter: refresh_token")
        return _json(store.refresh(token, client_id, issuer))
    if grant == DEVICE_GRANT:
        if client_id not in DEVICE_CLIENTS:
            raise KeycloakError(400, "unauthorized_client", "Client is not allowed to initiate OAuth 2.0 Device Authorization Grant.")
        code = form.get("device_code")
        if not code:
            raise KeycloakError(400, "invalid_request", "Missing parameter: device_code")
        return _json(store.device_poll(code, client_id, issuer))
    raise KeycloakError(400, "unsupported_grant_type", "Unsupported grant_type")


def _device_endpoint(request: Request, store: TokenStore, settings: EmulatorSettings, issuer: str) -> Response:
    if request.method != "POST":
        return _json({"error": "invalid_request", "error_description": "HTTP method not allowed"}, 405)
    client_id = _client_id(request)
    if client_id is None or client_id not in CLIENTS:
        raise KeycloakError(401, "invalid_client", "Invalid client or Invalid client credentials")
    if client_id not in DEVICE_CLIENTS:
        raise KeycloakError(400, "unauthorized_client", "Client is not allowed to initiate OAuth 2.0 Device Authorization Grant.")
    device_code, user_code, lifetime = store.device_start(client_id)
    verify = issuer + "/device"
    return _json({
        "device_code": device_code, "user_code": user_code, "verification_uri": verify,
        "verification_uri_complete": verify + "?" + urlencode({"user_code": user_code}),
        "expires_in": int(lifetime), "interval": int(settings.device_interval),
    })


def _login_page(request: Request, issuer: str) -> Response:
    """What a browser (or GDAL following the download 302) gets: an HTML form."""
    action = issuer + "/login-actions/authenticate?" + urlencode(
        {"session_code": secrets.token_urlsafe(16), "client_id": request.args.get("client_id", "")})
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in to Terrascope</title></head>
<body><h1>Sign in to your account</h1>
<form id="kc-form-login" action="{html.escape(action)}" method="post">
<label for="username">Username or email</label><input id="username" name="username" type="text">
<label for="password">Password</label><input id="password" name="password" type="password">
<input type="submit" name="login" value="Sign In">
</form></body></html>
"""
    return Response(page, mimetype="text/html")


def _device_page(issuer: str) -> Response:
    page = ("<!DOCTYPE html><html><head><title>Device Login</title></head><body>"
            "<h1>Device Login</h1><p>Enter the code shown on your device.</p>"
            "<p>(terrafs emulator: approve with /_emulator/device/approve?user_code=...)</p></body></html>")
    return Response(page, mimetype="text/html")


def handle_keycloak(request: Request, store: TokenStore, settings: EmulatorSettings, base_url: str, subpath: str) -> Response:
    """Serve <base_url>/auth/realms/terrascope/<subpath> (subpath without leading slash)."""
    issuer = base_url + REALM_PATH
    sub = subpath.strip("/")
    try:
        if sub == ".well-known/openid-configuration":
            return _json(discovery(issuer))
        if sub == "protocol/openid-connect/token":
            return _token_endpoint(request, store, settings, issuer)
        if sub == "protocol/openid-connect/auth/device":
            return _device_endpoint(request, store, settings, issuer)
        if sub == "protocol/openid-connect/auth":
            return _login_page(request, issuer)
        if sub == "protocol/openid-connect/certs":
            return _json({"keys": []})
        if sub == "device":
            return _device_page(issuer)
        if sub == "":
            return _json({"realm": "terrascope", "token-service": issuer + "/protocol/openid-connect",
                          "account-service": issuer + "/account"})
    except KeycloakError as err:
        log.debug("keycloak answers %s %s", err.status, err.error)
        return _error(err)
    return _json({"error": "Unable to find matching target resource method"}, 404)
