"""The cost profile: how much CPU each step of the Kamailio process model takes.

Every figure is in microseconds of CPU time on one core. The defaults are rough values
derived from the measurements quoted in the reference (§7, §3, §9, and the issue's
Kamailio 5.6 figures), not a calibration: `deferbench calibrate` is meant to replace them
with a fitted profile, loaded from a TOML or JSON file with the same keys.

Derivations of the defaults (reference figures on a 2-vCPU VM):
- `rtimer_pass`: a 10 ms rtimer polling an empty mqueue costs 0.20–0.25 % of a core at
  100 wake-ups/s, so ≈ 22 µs per pass (wake-up, faked request, callbacks, AVP reset).
- `async_ms_pass`: `ms_timer=1` costs 2.25 % of a core at 911 wake-ups/s: ≈ 24 µs per pass.
- `sleep_overshoot`: P = interval + ε + pass; 12 rtimers × 10 ms give ≈ 1,190 wake-ups/s
  (P ≈ 10.08 ms) and `ms_timer=1` gives P ≈ 1.09 ms, so ε ≈ 65 µs; the reference measured
  80–170 µs for a bare sleep, hence the ± jitter that also makes timer phases drift.
- `fork_gap`, `fork_gap_spread`: a module forks its timer processes one after another in
  `child_init`, so their first passes (and phases) are one fork apart: 5 µs by default
  (clustered, §7); `calibrate` measures the gaps between Kamailio's first rtimer passes.
- `wakeup_tail`, `wakeup_tail_share`: none by default. On a loaded 2-vCPU machine a woken
  Kamailio process often waits for the scheduler while the load generator holds the cores
  (CFS does not always preempt): ms tails on every hand-off once traffic flows (idle timers
  show none), common to every process woken meanwhile (`core.runtime.process.Stalls`);
  `calibrate` fits the mixture to the single-wake-up delays of `blocking-sleep` and
  `async-task` (p50 and p99).
- `wakeup_tail_per_load`: none by default. With SIPp beside Kamailio the single-wake-up
  tail grows with the rate (`async-task` p99 − p50 ≈ 0.24 ms at 50 re-INVITEs/s, 0.46 at
  1,000): the busier the cores — the server's work and the load generator's, which grows
  with the same traffic — the longer a woken process waits. A stall's mean is
  `wakeup_tail` + this × the cores' busy share over the last quarter second (timers'
  passes included: they hold cores like any work), up to `wakeup_tail_ceiling`;
  `calibrate` fits the line through the tails fitted at each fit point against Kamailio's
  busy share there, and the ceiling is the busiest of them (the tail is not extrapolated:
  a fit up to 20 % of the cores says nothing of 60 %).
- `driver_pause_late`, `driver_pause_late_jitter`: not CPU but the load generator's timing,
  used only when the sim stands in for a SIPp-driven run (`--driver sipp`): SIPp ends a
  `<pause milliseconds="20"/>` about 2–7 ms late on this box, and its re-INVITE mostly
  leaves about 1 ms after the stamp SIPp logs for it; together a median near 4.8 ms. That
  spreads the arrival phase of re-INVITEs over a 10 ms timer period (on time, each call
  meets the timers at one phase). Drawn from `driver_pause_late_quantiles` when the
  profile has them (the measured distribution: it has several modes a millisecond apart
  and a low tail that decides how long the unluckiest re-INVITEs wait), else uniformly
  from late ± jitter. `calibrate` measures them from SIPp's answer and send stamps and
  Kamailio's suspend times.
- `load_exponent`, `load_floor`: none by default. On this box Kamailio's CPU per
  re-INVITE falls with the load, alike for every strategy (`inline`: ≈550 µs at 50
  re-INVITEs/s, ≈340 at 200, ≈207 at 1,000; the work per message is the same): a busy
  machine keeps its caches, clock and idle states warm. So a step costs its idle price ×
  (min(u, `load_ceiling`) / `load_floor`)^−`load_exponent` once the cores' recent busy
  share u (`core.runtime.process.CpuPool.at_load`) exceeds `load_floor`. Timers' empty
  passes count towards no load (`Pass`): Kamailio's message work is no cheaper for a
  `ms_timer=1` or twelve rtimers waking a thousand times a second (with them it cost as
  much or more). `calibrate` fits the exponent to how Kamailio's CPU per re-INVITE falls
  with the busy share its load added above idle at the fit rates; the floor and ceiling
  are the lightest and busiest such loads measured there (the price is not extrapolated
  beyond them).
- `sleep_wake`: none by default. A SIP worker blocked in `usleep()` wakes from its
  `select()` timeout 10 ms later and relays the request it holds with cold caches: on this
  box Kamailio spent ≈ 240 µs more per re-INVITE with `blocking-sleep:ms=10` than `inline`
  at 50/s and ≈ 90 µs more at 1,000/s in one calibration, about as much as `inline` in
  another (priced by load like every step). `calibrate` fits it to that excess at the fit
  rates.
- request/response handling: Kamailio spends ≈ 330–450 µs of CPU per re-INVITE including its
  share of the call's other messages (≈ 7 messages in and out): ≈ 40 µs per request
  received and routed, 30 µs per response.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any


class CostProfileError(ValueError):
    """A cost profile file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class CostProfile:
    """CPU cost of each modelled step, in microseconds (see the module docstring)."""

    request: float = 40.0  # receive + parse + request_route of one request, until it is relayed
    response: float = 30.0  # receive + parse + forward of one response
    retransmission: float = 12.0  # a retransmission absorbed from transaction state
    relay: float = 20.0  # t_relay(): build + send the forwarded request
    reply: float = 15.0  # a locally generated reply (100, 408, 487, 500)
    timer_tick: float = 5.0  # a core timer process tick with nothing due
    t_suspend: float = 15.0  # shm clone, lumps, blind branch, timer insert
    t_continue: float = 25.0  # locked lookup, pkg copy of the request, flag swap
    mq_add: float = 2.0
    mq_fetch_empty: float = 1.0
    mq_fetch_item: float = 3.0
    rtimer_pass: float = 22.0  # one rtimer wake-up: faked request, route entry, AVP reset
    async_insert: float = 3.0  # async_ms_* / async_sleep enqueue under the list lock
    async_ms_pass: float = 24.0  # one "ASYNC MOD MS TIMER" loop with nothing due
    async_s_pass: float = 24.0  # one "ASYNC MOD TIMER" (seconds ring) loop with nothing due
    async_item: float = 2.0  # unlinking one due item in a timer pass
    task_push: float = 6.0  # write() of the 8-byte task pointer
    task_receive: float = 10.0  # recvfrom() + context switch in the task worker
    sleep_wake: float = 0.0  # a SIP worker's return from usleep(): its wake-up, the relay cold
    sleep_overshoot: float = 65.0  # ε: how late a sleep()/select() returns
    sleep_overshoot_jitter: float = 30.0  # ε is drawn uniformly from ε ± jitter
    fork_gap: float = 5.0  # mean time between the forks of one module's timer processes
    fork_gap_spread: float = 0.0  # 0: every gap is fork_gap; 1: exponential gaps (same mean)
    wakeup_tail: float = 0.0  # mean stall of the cores under traffic (a delayed wake-up's mean)
    wakeup_tail_share: float = 0.0  # share of the time stalled (of wake-ups delayed), ≤ 0.95
    wakeup_tail_common: float = 1.0  # share of wake-ups that meet the stalls common to all
    wakeup_tail_per_load: float = 0.0  # the stall's mean grows by this × the cores' busy share
    wakeup_tail_ceiling: float = 1.0  # ... up to this busy share (of all the cores)
    load_exponent: float = 0.0  # a step costs × (load / load_floor)^−this above the floor
    load_floor: float = 0.01  # busy share of all the cores below which steps cost their price
    load_ceiling: float = 1.0  # ... and above which they cost what they cost at it
    driver_pause_late: float = 0.0  # SIPp driver: how late a scenario <pause> ends (median)
    driver_pause_late_jitter: float = 0.0  # ... drawn uniformly from late ± jitter
    # ... or, when given, drawn from this measured distribution instead: its quantiles at
    # equal steps of probability from 0 to 1, ascending (µs; at least 2)
    driver_pause_late_quantiles: tuple[float, ...] = ()

    def seconds(self, name: str) -> float:
        return getattr(self, name) * 1e-6

    def with_values(self, **values: Any) -> CostProfile:
        return replace(self, **values)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "cost profile") -> CostProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CostProfileError(
                f"{source}: unknown cost {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        clean: dict[str, Any] = {}
        for key, value in data.items():
            if key in DISTRIBUTIONS:
                clean[key] = _quantiles(value, f"{source}: {key}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise CostProfileError(f"{source}: {key} must be a number >= 0 (µs), got {value!r}")
            else:
                clean[key] = float(value)
        return cls(**clean)

    @classmethod
    def load(cls, path: str | Path) -> CostProfile:
        """Read a profile from TOML or JSON (a `[costs]` table or top-level keys, in µs)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CostProfileError(f"{path}: cannot read cost profile ({exc.strerror})") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise CostProfileError(f"{path}: not a valid cost profile ({exc})") from None
        if not isinstance(data, dict):
            raise CostProfileError(f"{path}: a cost profile must be a table of costs")
        table = data.get("costs", data)
        if not isinstance(table, dict):
            raise CostProfileError(f"{path}: [costs] must be a table")
        return cls.from_mapping(table, str(path))


DISTRIBUTIONS = ("driver_pause_late_quantiles",)
"""Keys whose value is a distribution (a list of quantiles), not one figure."""


def _quantiles(value: Any, what: str) -> tuple[float, ...]:
    """A distribution's quantiles: empty, or at least 2 ascending numbers >= 0."""
    if not isinstance(value, list | tuple) or any(
        isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in value
    ):
        raise CostProfileError(f"{what} must be a list of numbers >= 0 (µs), got {value!r}")
    if len(value) == 1 or any(b < a for a, b in pairwise(value)):
        raise CostProfileError(f"{what} must be at least 2 quantiles in ascending order")
    return tuple(float(v) for v in value)


EXACT = CostProfile(sleep_overshoot_jitter=0.0)
"""Defaults without overshoot jitter: timer phases are exact, for tests that assert times."""
