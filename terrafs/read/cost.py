"""The price of a plan: what a request and a byte cost the user now, on this link and budget.

A plan's time is its requests plus its bytes. A request costs about a round
trip (time to first byte) while the rate-limit windows have room, plus the
share of the window it spends (requests are what every mount of the user
shares), and the wait it adds once a window binds. A byte costs 1 / the
throughput the mount measures on its own answers. A speculative byte (a
neighbouring tile, a margin past a read, a larger head) is worth fetching when
what it wastes if nobody reads it is below what it saves if somebody does:
(1 - p) x its price <= p x the price of the request it saves, p the chance
it is read. (Bytes that are read cost the same in either request.) On
loopback and fast links that favours large fetches; on a slow link with room
in the budget it favours what the program asked for and what the kernel will
ask next. A guess sent in a request of its own, alongside the one the user
waits for (the next tile row of a window), is priced by the time it saves
against the request it spends when wrong.

Everything here is pure: link and budget state in, prices out; no clock, lock or I/O.
Must not: measure anything (link.py does) or ask the limiter (the reader does, outside its locks).
"""
from __future__ import annotations

from dataclasses import dataclass

from terrafs.remote.limiter import BudgetState

#: The share of its spacing a request is priced at even while the window is far from full:
#: every mount and command of the user draws on the window, and it refills only at its spacing.
USED_FLOOR = 0.5


@dataclass(frozen=True)
class Link:
    """The link as the mount sees it on its own answers."""

    ttfb: float  # seconds from sending a request to its first byte (connection set-up included)
    throughput: float  # bytes per second of an answer once it flows


@dataclass(frozen=True)
class Conditions:
    """Everything a plan's prices depend on: the link, the budget, and how far the kernel reads ahead."""

    link: Link
    budget: BudgetState
    kernel_ahead: int  # bytes the kernel asks past a program's read, as measured on this mount


#: The first byte comes this late only over a network: on loopback within a few ms, loaded or not.
NETWORK_RTT = 0.01

#: No limiter known (a test's downloader, or a budget that cannot say): the documented
#: service budget (80 requests per 10 s), with room.
DOCUMENTED = BudgetState(room=80, wait=0.0, spacing=10 / 80, used=0.0)


def request_price(c: Conditions) -> float:
    """Seconds one more request costs now."""
    b = c.budget
    if b.room <= 0:
        return c.link.ttfb + max(b.wait, b.spacing)
    return c.link.ttfb + b.spacing * max(b.used, USED_FLOOR)


def byte_price(c: Conditions, n: int) -> float:
    """Seconds n more bytes in a request cost now."""
    return max(0, n) / max(1.0, c.link.throughput)


def worth(c: Conditions, n: int, chance: float) -> bool:
    """Whether n speculative bytes are worth fetching if they are read (and save a request) with this chance."""
    return (1.0 - chance) * byte_price(c, n) <= chance * request_price(c)


def parallel_worth(c: Conditions, n: int, chance: float) -> bool:
    """Whether n bytes the program may ask for next are worth a request of their own now, sent
    alongside the one it waits for: read (`chance`), they save their round trip and transfer and
    no request (they would be fetched anyway); unread, the request is spent. Never once the
    budget binds: then every request spent makes the user wait. Never without a network either."""
    if c.budget.room <= 0 or not networked(c):
        return False
    return chance * (c.link.ttfb + byte_price(c, n)) > (1.0 - chance) * request_price(c)


def networked(c: Conditions) -> bool:
    """Whether a network lies between the mount and the server (a round trip of NETWORK_RTT or more):
    on loopback a slow answer is the machine's CPU, which two requests at once share, not a link."""
    return c.link.ttfb >= NETWORK_RTT


def affordable(c: Conditions, chance: float) -> int:
    """The most speculative bytes worth fetching if they are read with this chance (unbounded at 1)."""
    if chance >= 1.0:
        return 1 << 62
    return int(chance / (1.0 - chance) * request_price(c) * max(1.0, c.link.throughput))


def describe(c: Conditions | None) -> str:
    """The conditions a plan was priced on, for the read path's debug log."""
    if c is None:
        return ""
    return (f" (ttfb {c.link.ttfb * 1e3:.1f} ms, {c.link.throughput / 1e6:.1f} MB/s, room {c.budget.room}, "
            f"kernel {c.kernel_ahead >> 10} KiB)")
