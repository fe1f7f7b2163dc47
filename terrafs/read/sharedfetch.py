"""One fetch per unit across the cluster: claims in Redis around a node's ranged fetch.

A node about to fetch units [a, b) of a file claims each in Redis (SET NX with
an expiry, so that a node that dies mid-fetch holds nobody up for long). The
units it claimed it fetches, as one range from the first to the last of them;
what it fetched goes to the tier (SharedTier.put, which releases the claims
once the bytes are there). For the units another node claimed it waits for that
node's bytes in the tier while the claim lives, up to `TierSettings.wait`, and
fetches what did not come itself. Redis away: the plain fetch.

Must not: decide which units a read fetches (fetches.py and the policy do), or
fetch anything but the range asked for and parts of it.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Callable

from terrafs.errors import FetchError
from terrafs.read.remote import Units
from terrafs.read.sharedtier import PREFIX, SharedTier, _url_key

log = logging.getLogger(__name__)

CLAIM_SECONDS = 15.0  # a claim's life: longer than a fetch waits for the budget and runs, short enough to not stall
_POLL = 0.02  # seconds between looks at the tier while another node fetches

_NODE = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim_key(u: Units, i: int) -> str:
    return f"{PREFIX}:c:{_url_key(u.url)}:{u.size}:{u.unit}:{i}"


class SharedFetch:
    def __init__(self, tier: SharedTier):
        self.tier = tier

    def fetch_range(self, u: Units, start: int, end: int, fetch: Callable[[int, int], bytes]) -> bytes:
        """Bytes [start, end) of u's file (unit-aligned), fetched once across the cluster."""
        first, last = start // u.unit, (end - 1) // u.unit
        units = list(range(first, last + 1))
        keys = [claim_key(u, i) for i in units]
        ttl = int(CLAIM_SECONDS * 1000)

        def claim() -> list:
            pipe = self.tier._client.pipeline(transaction=False)
            for k in keys:
                pipe.set(k, _NODE, nx=True, px=ttl)
            return pipe.execute()

        won = self.tier.call(claim)
        if won is None:  # Redis away: as if there were no cluster
            return fetch(start, end)
        mine = [i for i, ok in zip(units, won) if ok]
        self.tier.counts.add("shared_claims", len(mine))
        out = bytearray(end - start)
        have: set[int] = set()
        # A unit may have arrived between the read's look and the claim (its claim released with its put).
        arrived = self.tier.get_many(u, mine)
        if arrived:
            self.tier.call(lambda: self.tier._client.delete(*[claim_key(u, i) for i in arrived]))
            self._place(arrived, u, start, out)
            have.update(arrived)
            self.tier.counts.add("shared_hits", len(arrived))
            mine = [i for i in mine if i not in arrived]
        if mine:
            a, b = mine[0], mine[-1]
            self._fetch_mine(u, a, b, start, end, fetch, out)
            have.update(range(a, b + 1))
        theirs = [i for i in units if i not in have]
        if theirs:
            have.update(self._wait(u, theirs, start, out))
        left = [i for i in units if i not in have]
        if left:  # the other node's bytes did not come: fetch them here, and offer them
            self._fetch_mine(u, left[0], left[-1], start, end, fetch, out, claimed=False)
        return bytes(out)

    def _fetch_mine(self, u: Units, a: int, b: int, start: int, end: int, fetch: Callable[[int, int], bytes],
                    out: bytearray, claimed: bool = True) -> None:
        lo, hi = max(start, a * u.unit), min(end, (b + 1) * u.unit)
        try:
            data = fetch(lo, hi)
        except BaseException:
            if claimed:  # nobody waits for bytes that will not come
                self.tier.call(lambda: self.tier._client.delete(*[claim_key(u, i) for i in range(a, b + 1)]))
            raise
        if len(data) != hi - lo:
            raise FetchError(f"got {len(data)} bytes of {u.url} for a range of {hi - lo}")
        out[lo - start: hi - start] = data
        for i in range(a, b + 1):
            s = i * u.unit - lo
            self.tier.put(u, i, bytes(data[s: s + u.length(i)]), claim_key(u, i) if claimed else "")

    @staticmethod
    def _place(found: dict[int, bytes], u: Units, start: int, out: bytearray) -> None:
        for i, data in found.items():
            pos = i * u.unit - start
            out[pos: pos + len(data)] = data

    def _wait(self, u: Units, wanted: list[int], start: int, out: bytearray) -> set[int]:
        """Units of `wanted` whose bytes another node put in the tier while its claim lived."""
        got: set[int] = set()
        t0 = time.monotonic()
        deadline = t0 + self.tier.settings.wait
        self.tier.counts.add("shared_waits", 1)
        pending = list(wanted)
        while pending and time.monotonic() < deadline:
            # Claims first: a claim gone before the look below means its bytes are there, or never will be.
            alive = self.tier.call(lambda: self.tier._client.exists(*[claim_key(u, i) for i in pending]), 0)
            arrived = self.tier.get_many(u, pending)
            self._place(arrived, u, start, out)
            got.update(arrived)
            pending = [i for i in pending if i not in arrived]
            if pending and alive < len(pending):
                break  # a claim ended without bytes (a failed fetch, or Redis away): fetch here
            if pending:
                time.sleep(_POLL)
        self.tier.counts.add("shared_hits", len(got))
        self.tier.counts.add("shared_wait_seconds", time.monotonic() - t0)
        return got
