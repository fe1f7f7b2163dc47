"""Authentication: token manager logic (fake token endpoint), bearer downloads against
the emulator (renewal, 401 retry, bad password), device login, the refresh-token file."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from mounting import emulator_is_download_host  # noqa: F401  (a fixture: the emulator gets credentials)
from terrafs.remote.auth import (BasicAuth, BearerAuth, TokenManager, device_login, load_refresh_token,
                          make_auth, save_refresh_token)
from terrafs.errors import AuthError
from terrafs.remote.http import Downloader

# -- token manager logic against a fake token endpoint ---------------------------------


class FakeResponse:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code = status
        self._body = body

    def json(self) -> dict[str, Any]:
        return self._body


class FakeTokenEndpoint:
    """Answers like Keycloak; refuses refresh tokens listed in `dead`."""

    def __init__(self, expires_in: int = 300) -> None:
        self.calls: list[dict[str, Any]] = []
        self.expires_in = expires_in
        self.dead: set[str] = set()
        self.lock = threading.Lock()
        self.delay = 0.0

    def post(self, url: str, data: dict[str, Any], **kw: Any) -> FakeResponse:
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(dict(data))
            n = len(self.calls)
        if data["grant_type"] == "refresh_token" and data["refresh_token"] in self.dead:
            return FakeResponse(400, {"error": "invalid_grant", "error_description": "Token is not active"})
        if data["grant_type"] == "password" and data["password"] != "right":
            return FakeResponse(401, {"error": "invalid_grant",
                                      "error_description": f"Invalid user credentials {data['password']}"})
        return FakeResponse(200, {"access_token": f"acc{n}", "expires_in": self.expires_in,
                                  "refresh_token": f"ref{n}", "refresh_expires_in": 3600})


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def manager(endpoint: FakeTokenEndpoint, clock: Clock | None = None, **kw: Any) -> TokenManager:
    kw.setdefault("username", "u")
    kw.setdefault("password", "right")
    return TokenManager("http://127.0.0.1:9/token", "public", session=endpoint,  # type: ignore[arg-type]
                        clock=clock or time.time, **kw)


def test_token_is_reused_until_the_early_renewal_margin() -> None:
    ep, clock = FakeTokenEndpoint(expires_in=300), Clock()
    m = manager(ep, clock, early_renewal=30)
    assert m.access_token() == "acc1"
    clock.now += 269
    assert m.access_token() == "acc1"
    clock.now += 2
    assert m.access_token() == "acc2", "the token must be renewed 30 s before it expires"
    assert [c["grant_type"] for c in ep.calls] == ["password", "refresh_token"]
    assert ep.calls[1]["refresh_token"] == "ref1"


def test_short_lived_tokens_are_not_renewed_on_every_call() -> None:
    ep, clock = FakeTokenEndpoint(expires_in=2), Clock()
    m = manager(ep, clock, early_renewal=30)
    m.access_token()
    m.access_token()
    assert len(ep.calls) == 1


def test_refused_refresh_token_falls_back_to_the_password() -> None:
    ep, clock = FakeTokenEndpoint(), Clock()
    m = manager(ep, clock)
    m.access_token()
    ep.dead.add("ref1")
    clock.now += 1000
    assert m.access_token() == "acc3"
    assert [c["grant_type"] for c in ep.calls] == ["password", "refresh_token", "password"]


def test_refused_refresh_token_without_password_is_a_clear_auth_error() -> None:
    ep = FakeTokenEndpoint()
    ep.dead.add("stored")
    m = manager(ep, username=None, password=None, refresh_token="stored")
    with pytest.raises(AuthError, match="invalid_grant.*log in again"):
        m.check()


def test_one_renewal_for_many_threads() -> None:
    ep = FakeTokenEndpoint()
    ep.delay = 0.2
    m = manager(ep)
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(m.access_token())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(ep.calls) == 1, f"{len(ep.calls)} token requests for 8 threads"
    assert set(tokens) == {"acc1"}


def test_invalidate_renews_only_if_the_token_is_still_current() -> None:
    ep = FakeTokenEndpoint()
    m = manager(ep)
    m.access_token()
    m.invalidate("some-older-token")
    assert m.access_token() == "acc1"
    m.invalidate("acc1")
    assert m.access_token() == "acc2"


def test_bad_password_message_is_clear_and_secret_free() -> None:
    m = manager(FakeTokenEndpoint(), password="Sup3rSecret")
    with pytest.raises(AuthError) as err:
        m.check()
    text = str(err.value)
    assert "invalid_grant" in text and "Invalid user credentials" in text
    assert "Sup3rSecret" not in text, "the password leaked into the error message"


def test_reprs_hide_secrets() -> None:
    m = manager(FakeTokenEndpoint(), password="right")
    m.access_token()
    for obj in (m, BearerAuth(m), BasicAuth("u", "right")):
        assert "right" not in repr(obj) and "acc1" not in repr(obj), repr(obj)


def test_rotated_refresh_token_is_handed_to_the_store() -> None:
    stored: list[str] = []
    ep, clock = FakeTokenEndpoint(), Clock()
    m = manager(ep, clock, username=None, password=None, refresh_token="r0", on_refresh_token=stored.append)
    m.access_token()
    assert stored == ["ref1"]


# -- refresh-token file --------------------------------------------------------------


def test_refresh_token_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "terrafs" / "refresh_token"
    save_refresh_token(path, "tok-1")
    save_refresh_token(path, "tok-2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_refresh_token(path) == "tok-2"
    assert [p.name for p in path.parent.iterdir()] == ["refresh_token"], "temporary file left behind"


def test_refresh_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "refresh_token"
    path.write_text("tok")
    os.chmod(path, 0o644)
    with pytest.raises(AuthError, match="chmod 600"):
        load_refresh_token(path)
    assert load_refresh_token(tmp_path / "missing") is None


def test_make_auth_variants(tmp_path: Path) -> None:
    assert isinstance(make_auth("basic", username="a", password="b"), BasicAuth)
    assert make_auth("basic") is None
    assert make_auth("bearer", token_url="http://127.0.0.1:9/t") is None
    save_refresh_token(tmp_path / "rt", "tok")
    auth = make_auth("bearer", token_url="http://127.0.0.1:9/t", refresh_token_file=tmp_path / "rt")
    assert isinstance(auth, BearerAuth)
    with pytest.raises(AuthError):
        make_auth("digest", username="a", password="b")


# -- against the emulator ---------------------------------------------------------------


@pytest.fixture
def url(emulator, emulator_is_download_host) -> str:
    files = emulator.files(limit=20, min_size=20_000)
    assert files, "the emulator serves no file over 20 kB"
    return emulator.download_url(files[0]["path"])


def bearer(emulator, **kw: Any) -> BearerAuth:
    kw.setdefault("username", "demo")
    kw.setdefault("password", "demo")
    return BearerAuth(TokenManager(emulator.token_url, "public", **kw))


def token_requests(emulator) -> list[dict]:
    return [e for e in emulator.requests("auth") if e["path"].endswith("/token")]


def test_reads_succeed_across_several_token_renewals(emulator, url: str) -> None:
    emulator.set(access_token_lifetime=2)
    auth = bearer(emulator)
    d = Downloader(auth, None)
    reference = requests.get(url, auth=("demo", "demo"), timeout=30).content
    t_end = time.monotonic() + 4.5
    reads = 0
    while time.monotonic() < t_end:
        data, _ = d.get_range(url, 100, 4100)
        assert data == reference[100:4100]
        reads += 1
        time.sleep(0.3)
    statuses = [e["status"] for e in emulator.requests("download")]
    assert 401 not in statuses, "tokens must be renewed before they expire, not after a 401"
    assert len(token_requests(emulator)) >= 3, "a 2 s token over 4.5 s needs several renewals"
    assert auth.manager.renewals == len(token_requests(emulator))
    assert reads >= 10


def test_a_401_renews_the_token_once_and_retries(emulator, url: str) -> None:
    auth = bearer(emulator)
    d = Downloader(auth, None)
    d.get_range(url, 0, 10)
    emulator.set(revoke_tokens=True)  # the server forgets our still-unexpired token
    data, _ = d.get_range(url, 0, 10)
    assert len(data) == 10
    statuses = [e["status"] for e in emulator.requests("download")]
    assert statuses == [206, 401, 206], statuses
    assert auth.manager.renewals == 2
    assert d.requests_made == 3, "the resend after the 401 is a counted request"


def test_bad_password_is_an_auth_error_naming_the_server_reason(emulator) -> None:
    manager = TokenManager(emulator.token_url, "public", username="demo", password="Not-The-Pa55")
    with pytest.raises(AuthError) as err:
        manager.check()
    text = str(err.value)
    assert "invalid_grant" in text and "Not-The-Pa55" not in text
    assert "\n" not in text


def test_stored_refresh_token_alone_is_enough_to_download(emulator, url: str, tmp_path: Path) -> None:
    grant = requests.post(emulator.token_url, timeout=10, data={
        "grant_type": "password", "client_id": "public", "username": "demo", "password": "demo"}).json()
    save_refresh_token(tmp_path / "rt", grant["refresh_token"])
    auth = make_auth("bearer", token_url=emulator.token_url, refresh_token_file=tmp_path / "rt")
    data, _ = Downloader(auth, None).get_range(url, 0, 100)
    assert len(data) == 100
    assert load_refresh_token(tmp_path / "rt") != grant["refresh_token"], "the rotated refresh token is stored"


def test_device_login_returns_a_working_refresh_token(emulator, url: str) -> None:
    emulator.set(device_interval=1)
    shown: list[str] = []

    def prompt(text: str) -> None:
        shown.append(text)
        code = text.split("(code ")[1].rstrip(").")
        emulator.approve_device(code)

    session = requests.Session()
    refresh = device_login(emulator.token_url, emulator.token_url.replace("/token", "/auth/device"),
                           "public", session=session, prompt=prompt)
    assert shown and "http" in shown[0]
    auth = BearerAuth(TokenManager(emulator.token_url, "public", refresh_token=refresh))
    assert len(Downloader(auth, None).get_range(url, 0, 10)[0]) == 10


def test_device_login_denied_when_the_code_expires(emulator) -> None:
    fake_now = [0.0]

    def sleep(s: float) -> None:
        fake_now[0] += max(s, 1.0)

    with pytest.raises(AuthError, match="expired"):
        device_login(emulator.token_url, emulator.token_url.replace("/token", "/auth/device"), "public",
                     session=requests.Session(), prompt=lambda t: None, sleep=sleep,
                     clock=lambda: fake_now[0])


def test_debug_logs_never_show_tokens_or_passwords(emulator, url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    auth = bearer(emulator, password="demo")
    d = Downloader(auth, None)
    d.get_range(url, 0, 10)
    emulator.set(revoke_tokens=True)
    d.get_range(url, 0, 10)  # 401, renewal, resend: the chattiest path
    token = auth.manager.access_token()
    text = caplog.text
    assert "/download/" in text, "the download requests should be logged at DEBUG"
    assert token not in text and "Bearer ey" not in text and "Authorization" not in text
