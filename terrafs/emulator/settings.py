"""The emulator's runtime settings: what it does right now (users, token
lifetimes, rate limits and every fault knob).

app.py, download.py and keycloak.py all read one EmulatorSettings; it lives
here so that none of them imports another for it. Tests change it at runtime
over POST /_emulator/settings (see app.py), which goes through update(): a
patch is checked whole before anything changes.

This module only holds and validates values; it serves nothing and imports
nothing from the client side of terrafs.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Kinds of download fault the mixed fault rate draws from (fault_rate, fault_kinds):
#   500, 503      the status with a short text body
#   429           Too Many Requests with Retry-After: 1 (or none, if send_retry_after is off)
#   cut           the body cut half-way (the connection closed)
#   stall         half the body, a pause of stall_seconds, then the cut
#   wrong_range   206 for the range one byte later than asked (honest Content-Range; a broken proxy)
#   ignore_range  200 with the whole body for a Range request
#   html          200 with a 39-byte HTML login page (the real service when a session lapses)
FAULT_KINDS = ("500", "503", "429", "cut", "stall", "wrong_range", "ignore_range", "html")
# Kinds that need a Range request to mean anything; a plain GET draws from the others.
RANGE_ONLY_KINDS = ("wrong_range", "ignore_range")
# How the next catalogue answers fail (catalogue_fail_next): a status with an HTML
# page, or "html": status 200 with an HTML page (a proxy or a maintenance page).
CATALOGUE_FAILURES = ("500", "502", "503", "504", "429", "html")

# Settings a POST may change, with the type each value is coerced to.
_NUMBER_FIELDS = ("access_token_lifetime", "refresh_token_lifetime", "error_rate", "drop_rate",
                  "latency", "bandwidth", "device_interval", "fault_rate", "stall_seconds",
                  "link_rtt", "link_bandwidth")
_RATE_FIELDS = ("error_rate", "drop_rate", "fault_rate")
_BOOL_FIELDS = ("ignore_range", "send_retry_after", "wrong_content_range", "catalogue_garbage", "link_shared",
                "stac_fields")


@dataclass
class EmulatorSettings:
    """What the emulator does right now. Change it through update() (under the lock)."""

    users: dict[str, str] = field(default_factory=lambda: {"demo": "demo"})
    access_token_lifetime: float = 300.0
    refresh_token_lifetime: float = 3600.0
    # [(max requests, window seconds)] per client IP on /download/; [] = off.
    rate_limits: list[tuple[int, float]] = field(default_factory=lambda: [(80, 10.0), (200, 60.0)])
    error_rate: float = 0.0  # share of download requests answered 500/503
    drop_rate: float = 0.0  # share of download GETs cut mid-body
    latency: float = 0.0  # seconds added to each request
    bandwidth: float = 0.0  # bytes/s cap per download response; 0 = none
    # The link profile (link.py): a round trip per request, two more per new connection,
    # and each answer's body paced to link_bandwidth bytes/s (0 = no cap); every kind but control.
    link_rtt: float = 0.0
    link_bandwidth: float = 0.0
    link_shared: bool = False  # link_bandwidth is each client address's as a whole, not each answer's
    ignore_range: bool = False  # answer 200 + whole body to Range requests
    send_retry_after: bool = True  # Retry-After on 429
    wrong_content_range: bool = False  # 206 for the range one byte later than asked (a broken proxy)
    catalogue_garbage: bool = False  # catalogue answers 200 with an HTML error page (a proxy in the way)
    # The STAC API conforms to the fields extension (item-search#fields) and honours `fields`;
    # False: a server without it (no conformance class, `fields` ignored).
    stac_fields: bool = True
    # Mixed faults: this share of download GETs gets a fault of a kind drawn from fault_kinds.
    fault_rate: float = 0.0
    fault_kinds: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    stall_seconds: float = 2.0  # how long a "stall" fault pauses before it cuts
    # The next catalogue answers fail this way, one entry used up per catalogue request.
    catalogue_fail_next: list[str] = field(default_factory=list)
    device_interval: float = 5.0  # polling interval the device endpoint announces
    tokens_not_before: float = 0.0  # epoch; tokens issued earlier are dead (revoke_tokens)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, Any]:
        """JSON-safe view, without passwords."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
            out = {k: (list(v) if isinstance(v, list) else v) for k, v in out.items()}
        out["users"] = sorted(out["users"])
        out["rate_limits"] = [list(w) for w in out["rate_limits"]]
        return out

    def update(self, patch: dict[str, Any]) -> None:
        """Apply a patch; ValueError (nothing changed) on an unknown key or bad value."""
        new = {key: _checked(key, value) for key, value in patch.items()}
        with self._lock:
            for key, value in new.items():
                setattr(self, key, value)

    def copy(self) -> EmulatorSettings:
        """An independent copy (the start-up settings kept for reset)."""
        with self._lock:
            values = {f.name: _copied(getattr(self, f.name)) for f in dataclasses.fields(self)
                      if not f.name.startswith("_")}
        return EmulatorSettings(**values)

    def restore(self, other: EmulatorSettings) -> None:
        """Copy every setting of `other` (used to reset between tests)."""
        with self._lock:
            for f in dataclasses.fields(self):
                if not f.name.startswith("_"):
                    setattr(self, f.name, _copied(getattr(other, f.name)))

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working at once (as an admin
        'not before' push in Keycloak)."""
        with self._lock:
            # +epsilon: a token issued in this same instant is revoked too.
            self.tokens_not_before = time.time() + 1e-6

    def take_catalogue_failure(self) -> str | None:
        """The failure the next catalogue answer must show, used up; None: answer normally."""
        with self._lock:
            if not self.catalogue_fail_next:
                return None
            return self.catalogue_fail_next.pop(0)


def _copied(value: Any) -> Any:
    return type(value)(value) if isinstance(value, (dict, list)) else value


def _checked(key: str, value: Any) -> Any:
    """The value a patch may set for `key`; ValueError if it may not."""
    if key in _NUMBER_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{key} must be a number >= 0")
        if key in _RATE_FIELDS and value > 1:
            raise ValueError(f"{key} must be between 0 and 1")
        return float(value)
    if key in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        return value
    if key == "rate_limits":
        return parse_windows(value)
    if key == "users":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):
            raise ValueError("users must map names to passwords")
        return dict(value)
    if key == "fault_kinds":
        return _names(key, value, FAULT_KINDS, allow_empty=False)
    if key == "catalogue_fail_next":
        return _names(key, value, CATALOGUE_FAILURES, allow_empty=True)
    raise ValueError(f"unknown setting {key!r}")


def _names(key: str, value: Any, allowed: tuple[str, ...], allow_empty: bool) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                              for v in value):
        raise ValueError(f"{key} must be a list of: {', '.join(allowed)}")
    names = [str(v) for v in value]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"{key}: unknown {', '.join(bad)} (known: {', '.join(allowed)})")
    if not names and not allow_empty:
        raise ValueError(f"{key} must not be empty")
    return names


def parse_windows(value: Any) -> list[tuple[int, float]]:
    """[[count, seconds], ...] -> [(count, seconds), ...]; ValueError if malformed."""
    if not isinstance(value, list):
        raise ValueError("rate_limits must be a list of [count, seconds]")
    windows = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError("rate_limits must be a list of [count, seconds]")
        n, w = int(item[0]), float(item[1])
        if n < 0 or w <= 0:
            raise ValueError("rate limit needs count >= 0 and seconds > 0")
        windows.append((n, w))
    return windows
