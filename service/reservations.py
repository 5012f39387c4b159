"""Retry reservations: the ``Retry-After`` of a refused request becomes a promise the server keeps.

Why: under sustained overload the queue sits at its time budget. A refused client that waits its
``Retry-After`` meets the same full queue as the fresh requests arriving meanwhile, and the server cannot
tell it from them: no hint, however computed, makes the retry more likely to be admitted (issue #13,
measured: retries admitted 15-21 % of the time against 23-31 % for fresh requests). A reservation
(a ticket, as a virtual queue hands out) can:

* a client asks for one by sending ``Lrbnn-Retry-Token: request`` (any request that computes);
* if the request is refused with 429 for the queue, the answer carries ``Lrbnn-Retry-Token: <token>``:
  an HMAC-signed note of the model, the due time (now + ``Retry-After``) and the work booked;
* the retry sends the token back in the same header. Presented from half a second before its due time
  to :data:`GRACE_S` after it, once, it is admitted whatever the queue (the count bound, a memory limit,
  still holds) and is not shed at dispatch. Presented early, it is refused again with the same token and
  the seconds still to wait; presented late, already used, or not verifiable (another key, a forged or
  mangled token), it counts as a fresh request that asks for a reservation: never an error, because a
  token the client cannot read is the server's doing (a restart with another key), not the client's.

Over gRPC the same name, lower-cased (``lrbnn-retry-token``), rides on the invocation metadata and on
the trailing metadata of ``RESOURCE_EXHAUSTED``.

What keeps the promises keepable: the book grants at most ``share`` of the model's measured drain rate
to reservations, per second of due time, searching from the earliest second the queue could admit the
request (the plain ``Retry-After``) up to ``horizon_s``; and fresh admission counts the work booked for
the next budget's worth of seconds as if it were queued, so when a reservation falls due the queue has
room for it within the budget; a redeemed request goes to the front of the queue (its client has
already waited its turn). Under sustained overload the retries thus get ``share`` of the capacity
in the order they were refused, the fresh requests the rest. With the book full up to the horizon the
429 carries no token and ``Retry-After`` is the plain estimate (a hint, not a promise).

Opt-in, because a reservation no client redeems holds room in the queue until its due second passes:
clients that do not echo the token (most HTTP libraries' retry helpers) would lose throughput to it.

Not shared between processes: with ``LRBNN_WORKERS`` > 1 each worker books against its own queue and
honours every token signed with the key (the workers share the settings, hence the key); a retry may
land on another worker than the one that booked it, which then admits it on top of its own bookings. A
token can be redeemed once per worker. Replicas behind a load balancer share the key only if
``LRBNN_RETRY_TOKEN_KEY`` is set to the same secret on each.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

#: the request and response header
HEADER = "Lrbnn-Retry-Token"
#: the same over gRPC (metadata keys are lower case)
METADATA_KEY = HEADER.lower()
#: the request header's value that asks for a reservation without holding one
ASK = "request"
#: a token is honoured from this long before its due time (clients' timers, whole-second rounding) ...
EARLY_S = 0.5
#: ... to this long after it
GRACE_S = 5.0
#: the width of one booking bin, seconds of due time (``Retry-After`` is whole seconds)
BIN_S = 1.0
#: the longest token accepted (a header is not a place for a body)
MAX_TOKEN_CHARS = 256


class Outcome(str, Enum):
    """``lrbnn_retry_reservations_total{outcome}``."""

    BOOKED = "booked"  # a refused request got a token
    FULL = "full"  # a refused request asked, but the book was full up to the horizon
    REDEEMED = "redeemed"  # a token presented in time: admitted
    EARLY = "early"  # a token presented before its time: refused again, same token
    STALE = "stale"  # a token presented too late, twice, or that does not verify: a fresh request


@dataclass(frozen=True)
class Reservation:
    """One booking: due (wall-clock seconds), the cost units booked, its nonce and the signed token."""

    due: float
    units: int
    nonce: str
    token: str


@dataclass(frozen=True)
class RetryClaim:
    """What a request's ``Lrbnn-Retry-Token`` header says, once read by :meth:`RetryBook.claim`."""

    wants: bool = False  # the client asked for a reservation (it will echo a token)
    held: Reservation | None = None  # a token presented in time: admit whatever the queue
    early: Reservation | None = None  # a token presented before its due time

    @property
    def admits(self) -> bool:
        return self.held is not None


NO_CLAIM = RetryClaim()


def new_key() -> str:
    """A random signing key (the default of ``LRBNN_RETRY_TOKEN_KEY``)."""
    return secrets.token_urlsafe(32)


class RetryBook:
    """The reservations of one model's queue: booking, tokens, redemption, the work falling due.

    ``share``: the most of the measured drain rate promised per second of due time (0: off);
    ``horizon_s``: the furthest due time booked; ``clock``: wall-clock seconds (tokens are read by every
    worker, so not the batcher's monotonic clock; tests swap it)."""

    def __init__(
        self,
        model: str,
        key: str,
        share: float,
        horizon_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self._key = key.encode()
        self.share = share
        self.horizon_s = horizon_s
        self.clock = clock
        self._bins: dict[int, int] = {}  # bin index (floor(due / BIN_S)) -> units booked, not yet redeemed
        self._used: dict[str, float] = {}  # nonce -> the time after which it is stale anyway
        self._forgot_at = -math.inf

    @property
    def enabled(self) -> bool:
        return self.share > 0 and self.horizon_s >= 1

    # -- tokens --------------------------------------------------------------------------------
    def _sign(self, body: str) -> str:
        mac = hmac.new(self._key, f"{self.model}\0{body}".encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(mac).decode()

    def _token(self, due: float, units: int, nonce: str) -> str:
        body = f"{round(due * 1000)}.{units}.{nonce}"
        return f"{body}.{self._sign(body)}"

    def _read(self, token: str) -> Reservation | None:
        """The reservation a token names, or None if it does not verify (form, key or model)."""
        parts = token.split(".")
        if len(token) > MAX_TOKEN_CHARS or len(parts) != 4:
            return None
        due_ms, units, nonce, mac = parts
        if not (due_ms.isdigit() and units.isdigit()):
            return None
        if not hmac.compare_digest(mac, self._sign(f"{due_ms}.{units}.{nonce}")):
            return None
        return Reservation(int(due_ms) / 1000.0, int(units), nonce, token)

    # -- the request side ----------------------------------------------------------------------
    def claim(self, header: str | None) -> tuple[RetryClaim, Outcome | None]:
        """Read a request's header; a token presented in time is redeemed here (once) and leaves the
        book: from now on it is the queue's work. Returns the claim and what happened to a token."""
        if header is None or not self.enabled:
            return NO_CLAIM, None
        value = header.strip()
        if value.lower() == ASK:
            return RetryClaim(wants=True), None
        reservation = self._read(value)
        now = self.clock()
        self._forget(now)
        if reservation is None or reservation.nonce in self._used or now > reservation.due + GRACE_S:
            return RetryClaim(wants=True), Outcome.STALE
        if now < reservation.due - EARLY_S:
            return RetryClaim(wants=True, early=reservation), Outcome.EARLY
        self.settle(reservation)
        return RetryClaim(wants=True, held=reservation), Outcome.REDEEMED

    def settle(self, reservation: Reservation) -> None:
        """The reservation is used (redeemed, or its early client was admitted anyway): its nonce is
        spent and its work leaves the book (another worker's token booked nothing here)."""
        if reservation.nonce in self._used:
            return
        self._used[reservation.nonce] = reservation.due + GRACE_S
        b = self._bin(reservation.due)
        if b in self._bins:
            self._bins[b] = max(0, self._bins[b] - reservation.units)
            if not self._bins[b]:
                del self._bins[b]

    def due_units(self, within_s: float) -> float:
        """Units booked for due times from now to ``within_s`` ahead and not yet redeemed: fresh admission
        counts them as queued, so their clients find room when they come. A bin counts by the share of
        it inside the window (due times spread over a bin), so the count never exceeds ``share`` of the
        window's drain: counting whole bins held up to twice that and starved fresh admission (measured:
        6 % of fresh requests admitted under 2x overload, the queue too shallow to batch)."""
        if not self._bins:
            return 0.0
        now = self.clock()
        end = now + within_s
        total = 0.0
        first, last = self._bin(now), self._bin(end)
        # a budget spans two or three bins; a budget longer than the book: every bin once
        bins = range(first, last + 1) if last - first < len(self._bins) else sorted(self._bins)
        for b in bins:
            units = self._bins.get(b)
            if units:
                overlap = min((b + 1) * BIN_S, end) - max(b * BIN_S, now)
                if overlap > 0:
                    total += units * overlap / BIN_S
        return total

    def book(
        self, earliest_s: float, units: int, seconds_per_unit: float | None
    ) -> tuple[Reservation | None, Outcome]:
        """Book ``units`` at the first whole second from ``earliest_s`` (>= 1) whose bin has room within
        ``share`` of the drain rate, up to the horizon. None (FULL) when no second has room or nothing
        has been measured yet."""
        if seconds_per_unit is None or seconds_per_unit <= 0 or not math.isfinite(earliest_s):
            return None, Outcome.FULL
        now = self.clock()
        self._forget(now)
        capacity = self.share * BIN_S / seconds_per_unit
        wait = max(1, math.ceil(earliest_s))
        while wait <= self.horizon_s:
            due = now + wait
            b = self._bin(due)
            booked = self._bins.get(b, 0)
            if booked + units <= capacity or (booked == 0 and units > capacity):  # a large one alone
                self._bins[b] = booked + units
                nonce = secrets.token_urlsafe(9)
                return Reservation(due, units, nonce, self._token(due, units, nonce)), Outcome.BOOKED
            wait += 1
        return None, Outcome.FULL

    def seconds_until(self, reservation: Reservation) -> int:
        """The ``Retry-After`` of a token presented early: whole seconds to its due time, >= 1."""
        return max(1, math.ceil(reservation.due - self.clock()))

    @property
    def booked(self) -> int:
        """Units booked, not yet redeemed nor past (tests, debugging)."""
        self._forget(self.clock())
        return sum(self._bins.values())

    # -- book-keeping --------------------------------------------------------------------------
    @staticmethod
    def _bin(t: float) -> int:
        return math.floor(t / BIN_S)

    def _forget(self, now: float) -> None:
        """Drop the bins whose due time has passed and the nonces that are stale anyway; at most every
        tenth of a second (under overload it is asked on every refusal, and the nonces number ~1,000)."""
        if now - self._forgot_at < 0.1:
            return
        self._forgot_at = now
        past = self._bin(now - EARLY_S)
        for b in [b for b in self._bins if b < past]:
            del self._bins[b]
        if self._used:
            for nonce in [n for n, until in self._used.items() if until < now]:
                del self._used[nonce]
