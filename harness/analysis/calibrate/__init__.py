"""Calibration: the same loads on sim and real Kamailio, a cost profile fitted to Kamailio.

`calibrate` runs every (strategy, re-INVITE rate) on the kamailio target, SIPp driving
every run (constant arrivals, 10 re-INVITEs per call each 20 ms after the previous ACK:
`CALL_SHAPE`), then on the sim with the starting profile, plus one traffic-free run per
strategy on each side (the idle figures by process role). The rates split into fit rates
(default the lowest and highest, `fit_rates_of`) and held-out ones: every fit below uses
the idle runs (rate-free) and the runs at fit rates only, never a held-out run. It fits
what the measurements determine simply:

- timer passes from Kamailio's *idle* timer roles: a role of `n` processes with `w`
  wake-ups/s and `b` µs of CPU per second costs `b / w` µs per pass (`fit_timer`).
- the sleep overshoot ε, its jitter and the fork gaps from traced passes of the rtimer
  processes (`mqueue-rtimer`'s cfg logs passes 101-120 of each process with `trace=True`):
  period = interval + ε + pass; the gaps between the bunched phases are fork gaps; the
  spread of each period around the pool's mean is the jitter that drifts them
  (`fit_phases`). Without that trace, ε comes from the idle role's period `n / w` − interval
  − pass, where wake-ups are context switches (a pass that blocks on a lock switches twice).
- request/response/relay/reply/retransmission costs from `inline`: the ratio of Kamailio's
  marginal CPU per re-INVITE (loaded CPU per re-INVITE minus the idle CPU spread over the
  rate's re-INVITEs, `marginal_us`) to the sim's scales those costs (`fit_scale`).
- `t_suspend` + `t_continue` from the deferring strategies: the CPU per re-INVITE Kamailio
  spends above `inline` at the same rate, not yet explained by the sim, is charged to them
  (`fit_deferral`); blocking-sleep's, which suspends nothing, to the worker's wake-up from
  `usleep()` (`sleep_wake`, `fit_sleep_wake`).
- the wake-up tail (stalls of the cores under traffic) from the p50/p99 delay excess of
  the single-wake-up strategies over the sim (`fit_wakeup_tail`), as a line in Kamailio's
  busy share at each fit point (`fit_tail_line`): it grows with the load; the share of it
  common to all processes is the starting profile's, not fitted.
- how late SIPp ends a `<pause>`, from SIPp's answer and send stamps and Kamailio's suspend
  times (`pause_pairs`, `pause_lateness`: the lag to the suspend beyond Kamailio's quickest
  inbound path counts as SIPp's; every fit rate weighs alike, `even_mixture`;
  `fit_pause_late` its median ± IQR, `pause_late_quantiles` the distribution the sim
  draws from): the sim stands in for SIPp with it (`--driver
  sipp`), so re-INVITEs meet the timers at the phases SIPp gives them. mqueue-rtimer's delay
  is then predicted from measured quantities (the rtimer phases, ε, the pauses), not fitted
  to its p50.
- capacity from a ladder of rates, SIPp driving Kamailio (`capacity_ladder`).

It then re-runs the sim with the fitted profile and judges each figure against the
fidelity bounds (`judge`: delay p50/p99 within max(10 %, 0.5 ms), early share within
5 points, idle wake-ups/s within 10 %, CPU per re-INVITE within 15 %, capacity within
15 %). Every point is marked "fit" or "held out"; the summary counts held-out points only
(the fit ones are shown, not counted). With `repeat` > 1 every Kamailio point runs that
many times: the fits use every run at a fit rate, the judged figures are medians (a MISS
where Kamailio's own repeats spread wider than the bound names that spread, and says
"within Kamailio's own spread" when the sim is no further off than it), the capacity the
median of each repeat's. Capacity is saturation (ledger losses,
408s, 5xx, p99 bounds): 491 glare races stay in the ledger but do not count against it.
CPU is compared like with like: µs per re-INVITE, and shares of ONE core (Kamailio's are
of one core; the sim's of `cores`, so × cores).

Kamailio's side is kept (`kamailio.json` beside the profile): `refit` fits and judges the
current sim against it without Kamailio (`calibrate --refit DIR`).

The package is split by concept, each module importing only the ones below it: `fit`
(the arithmetic; imports none of the others), `runs` (Kamailio's side, the sim's, the
capacity ladder; imports `fit`), `measured` (Kamailio's side kept on disk; imports `fit`
and `runs`), `report` (figures, verdicts, table, summary, files; imports `fit`) and
`pipeline` (`calibrate`, `refit`, the order of the steps; imports all four).
This `__init__` only re-exports their public names (`cal.calibrate`, `cal.write`,
`cal.table`, `cal.summary`, ...) and must hold no logic of its own.

Nothing here changes the adopted default profile itself (`--adopt` in the CLI does,
explicitly), and Kamailio runs one job at a time (it measures real CPU); only sim runs go
to the executor.
"""

from harness.analysis.calibrate.fit import (
    DEFERRAL_COSTS,
    MESSAGE_COSTS,
    OVERSHOOT_ROLES,
    SINGLE_WAKE,
    TIMER_COSTS,
    LoadFit,
    PhaseFit,
    TimerFit,
    even_mixture,
    fit_deferral,
    fit_from_runs,
    fit_load,
    fit_pause_late,
    fit_phases,
    fit_rates_of,
    fit_scale,
    fit_sleep_wake,
    fit_tail_line,
    fit_timer,
    fit_wakeup_tail,
    fitted_profile,
    marginal_us,
    pause_late_quantiles,
    pause_lateness,
)
from harness.analysis.calibrate.measured import KamailioSide, MeasuredError
from harness.analysis.calibrate.measured import load as load_side
from harness.analysis.calibrate.measured import save as save_side
from harness.analysis.calibrate.pipeline import calibrate, refit
from harness.analysis.calibrate.report import (
    FIT,
    HELD_OUT,
    KNOWN_DELAY_CAUSES,
    ROWS,
    WITHIN_SPREAD,
    Calibration,
    Check,
    core_share,
    figures,
    judge,
    median_figures,
    profile_toml,
    summary,
    table,
    write,
)
from harness.analysis.calibrate.runs import (
    BOUND_MS,
    CALL_SHAPE,
    CAPACITY_SHAPE,
    E2E_BOUND_MS,
    IDLE_WINDOW,
    LOOPBACK,
    Progress,
    Runs,
    capacities,
    capacity_failure,
    capacity_ladder,
    capacity_load,
    capacity_why,
    load_for,
    pause_pairs,
)
from harness.targets.base import DISTURBED

__all__ = [
    "BOUND_MS",
    "CALL_SHAPE",
    "CAPACITY_SHAPE",
    "DEFERRAL_COSTS",
    "E2E_BOUND_MS",
    "FIT",
    "HELD_OUT",
    "IDLE_WINDOW",
    "KNOWN_DELAY_CAUSES",
    "LOOPBACK",
    "MESSAGE_COSTS",
    "OVERSHOOT_ROLES",
    "ROWS",
    "SINGLE_WAKE",
    "TIMER_COSTS",
    "WITHIN_SPREAD",
    "DISTURBED",
    "Calibration",
    "KamailioSide",
    "MeasuredError",
    "Check",
    "PhaseFit",
    "Progress",
    "Runs",
    "TimerFit",
    "calibrate",
    "refit",
    "load_side",
    "save_side",
    "capacities",
    "capacity_failure",
    "capacity_ladder",
    "capacity_load",
    "capacity_why",
    "core_share",
    "figures",
    "fit_deferral",
    "LoadFit",
    "fit_from_runs",
    "fit_load",
    "fit_pause_late",
    "pause_late_quantiles",
    "fit_phases",
    "fit_rates_of",
    "fit_scale",
    "fit_sleep_wake",
    "fit_timer",
    "fit_tail_line",
    "fit_wakeup_tail",
    "fitted_profile",
    "judge",
    "load_for",
    "marginal_us",
    "median_figures",
    "pause_lateness",
    "pause_pairs",
    "even_mixture",
    "profile_toml",
    "summary",
    "table",
    "write",
]
