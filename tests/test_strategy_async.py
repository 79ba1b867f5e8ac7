"""The async module strategies (`async-route`, `async-sleep`) against reference §2, §3, §5.

Virtual time with the EXACT cost profile (no overshoot jitter), so delays and 408 times are
asserted to the microsecond from the cost profile, never from hard-coded results.
"""

from __future__ import annotations

import math

import pytest

from core.runtime.costs import EXACT, CostProfile
from core.runtime.server import TICK, ServerSettings
from strategies import SpecError, parse_spec
from strategies import async_module as am
from tests.simkit import UAC, SimRun, simulate

US = 1e-6


def us(name: str, costs: CostProfile = EXACT) -> float:
    return costs.seconds(name)


def t_out(suspended_at: float, fr: float) -> float:
    """Reference §1.4: τ(t_s) + ⌈fr / tick⌉ ticks (no lifetime cap at these fr values)."""
    return (math.floor(suspended_at / TICK + 1e-9) + math.ceil(fr / TICK - 1e-9)) * TICK


def suspend_times(run: SimRun) -> dict[str, float]:
    """Call-ID -> when it was suspended (its 100 Trying leaves at the suspend instant)."""
    return {s.message.call_id: s.time for s in run.responses(100) if s.destination == UAC}


def first_relays(run: SimRun) -> dict[str, float]:
    """Call-ID -> when the proxy first relayed it (later ones are Timer A retransmissions)."""
    out: dict[str, float] = {}
    for s in run.relayed():
        out.setdefault(s.message.call_id, s.time)
    return out


def first_408s(run: SimRun) -> dict[str, float]:
    """Call-ID -> when its first 408 left (later ones are Timer G retransmissions)."""
    out: dict[str, float] = {}
    for s in run.responses(408):
        out.setdefault(s.message.call_id, s.time)
    return out


def assert_408_at_fr(run: SimRun, calls: list[str], fr: float, costs: CostProfile = EXACT):
    """Every call in `calls` got its 408 from the slow timer at exactly its T_out tick:
    the timer process's tick, then the slow timer's pass (each `timer_tick`), then the 408s.

    (Relayed calls may get a 408 too, later: the test UAS never answers them.)
    """
    suspended = suspend_times(run)
    answered = first_408s(run)
    assert set(calls) <= set(answered)
    for call in calls:
        deadline = t_out(suspended[call], fr)
        batch = sum(1 for s in run.sent if s.time == answered[call])  # sends of that tick
        expected = deadline + 2 * us("timer_tick", costs) + batch * us("reply", costs)
        assert answered[call] == pytest.approx(expected, abs=1e-9), call


def arrivals_away_from_second_boundaries(start: float, step: float, n: int) -> list[float]:
    """Arrival times at least 2 ms from a whole second (the seconds ring keys on it)."""
    times = [start + i * step for i in range(n)]
    return [t for t in times if 0.002 < t - math.floor(t) < 0.998]


# ---------------------------------------------------------------- shared-memory structures


def test_seconds_ring_is_lifo_per_slot_and_slots_alias_mod_100():
    ring = am.SecondsRing()
    a, b, c = (am.TxnId(1, i) for i in range(3))
    ring.push(5, a)
    ring.push(5, b)
    ring.push(105, c)  # same slot as second 5: the ring does not know seconds apart
    assert len(ring) == 3
    assert [ring.pop(5), ring.pop(105), ring.pop(5), ring.pop(5)] == [c, b, a, None]
    assert ring.pop(6) is None and len(ring) == 0


def test_ms_list_is_sorted_with_ties_in_front_and_pops_only_due_items():
    ms_list = am.MsList()
    order = []
    for label, due in enumerate([5.0, 3.0, 7.0, 5.0, 7.0, 3.0, 6.0]):
        item = am.MsItem(due, am.TxnId(0, label))
        order.append(item)
        ms_list.insert(item)
    assert ms_list.dues() == [3.0, 3.0, 5.0, 5.0, 6.0, 7.0, 7.0]
    labels = [ms_list.pop_due(100.0).txn.label for _ in range(7)]
    # equal dues: the later insert goes in front (head, scan and tail cases alike)
    assert labels == [5, 1, 3, 0, 6, 4, 2]
    assert ms_list.pop_due(100.0) is None
    ms_list.insert(am.MsItem(2.0, am.TxnId(0, 9)))
    assert ms_list.pop_due(1.999) is None and ms_list.pop_due(2.0).txn.label == 9
    assert ms_list.max_len == 7


# ---------------------------------------------------------------- parameters and kamailio.cfg


def test_default_specs_and_the_seconds_form_defaults():
    route = parse_spec("async-route")
    assert route.spec == "async-route:ms=10,workers=1,ms_timer=1,async_workers=1,async_nonblock=0"
    assert route.requested_delay == 0.01
    seconds = parse_spec("async-sleep:s=3")
    # with s= the ms form's defaults give way to Kamailio's own (ms_timer=0, async_workers=0)
    assert seconds.spec == "async-sleep:s=3,workers=1,ms_timer=0,async_workers=0,async_nonblock=0"
    assert seconds.requested_delay == 3.0
    with pytest.raises(SpecError, match="exactly one of ms= .* or s="):
        parse_spec("async-route:ms=10,s=1")


@pytest.mark.parametrize(
    "spec",
    [
        "async-route:ms=0",
        "async-route:ms=30000",
        "async-route:s=100",
        "async-route:workers=0",
        "async-route:ms_timer=0",
        "async-sleep:async_workers=0",
    ],
)
def test_misconfigurations_are_accepted_so_their_consequences_can_be_shown(spec):
    assert parse_spec(spec).spec.startswith(spec.split(":")[0])


def test_config_has_core_pool_module_params_and_t_check_trans_before_the_call():
    cfg = parse_spec("async-route:ms=10,workers=2,ms_timer=1,async_workers=4").kamailio_config()
    assert "\nasync_workers=4\n" in cfg
    assert "CORE async task pool" in cfg and "unrelated" in cfg and "408" in cfg
    assert 'loadmodule "async.so"' in cfg
    assert 'modparam("async", "workers", 2)' in cfg
    assert 'modparam("async", "ms_timer", 1)' in cfg
    call = cfg.index('async_ms_route("RESUME", "10");')
    assert cfg.index("t_check_trans();") < call
    assert cfg.index("loose_route()") < call and "record_route();" in cfg
    assert "route[RESUME] {\n\tt_relay();\n\texit;\n}" in cfg
    assert "WARNING" not in cfg


def test_sleep_config_continues_with_the_rest_of_the_block_and_warns_on_bad_settings():
    cfg = parse_spec("async-sleep:ms=10,async_workers=0,async_nonblock=1").kamailio_config()
    assert 'async_ms_sleep("10");\n\t\t\tt_relay();\n\t\t\texit;\n' in cfg
    assert "REST OF THIS BLOCK ONLY" in cfg and "route[RESUME]" not in cfg
    assert cfg.index("async_workers=0") < cfg.index("async_nonblock=1")
    assert "WARNING: async_workers=0" in cfg
    seconds = parse_spec("async-route:s=100").kamailio_config()
    assert 'async_route("RESUME", "100");' in seconds
    assert "WARNING: s=100 is outside 1..99" in seconds


# ---------------------------------------------------------------- ms form (§3)


def test_ms_route_never_resumes_early_and_is_late_by_less_than_one_ms_timer_period():
    arrivals = [0.1 + i * 0.0137 for i in range(120)]  # spacing not a multiple of the period
    run = simulate(
        "async-route:ms=10,workers=1,ms_timer=1,async_workers=1",
        arrivals,
        2.0,
        settings=ServerSettings(cores=8),  # no CPU contention: the bound is the timer's alone
    )
    delays = run.delays()
    assert len(delays) == len(arrivals) == len(first_relays(run))
    handoff = us("async_item") + us("task_push") + us("task_receive") + us("t_continue")
    period = 1e-3 + us("sleep_overshoot") + us("async_ms_pass")  # ms_timer + ε + pass
    assert min(delays) >= 0.010 + handoff - 1e-12
    assert max(delays) < 0.010 + period + handoff
    assert max(delays) - min(delays) > 0.8 * period  # the phase really is spread
    resumers = {d.resumed_by for d in run.server.deferrals.values()}
    assert resumers == {"Async Task Worker - default #0"}
    assert not run.server.counters


def test_ms_timer_is_one_process_waking_about_a_thousand_times_a_second_when_idle():
    run = simulate("async-route:ms=10,workers=3,ms_timer=1", [], 10.0, costs=CostProfile())
    roles = [p.role for p in run.server.processes]
    assert roles.count("async-ms-timer") == 1 and roles.count("async-timer") == 3
    rate = run.server.wakeups_by_role()["async-ms-timer"] / 10.0
    assert 900 <= rate <= 1000
    assert run.server.wakeups_by_role()["async-timer"] == 3 * 9  # 1/s each, ~1.0001 s period
    share = run.server.busy_by_role()["async-ms-timer"] / 10.0
    assert share == pytest.approx(rate * us("async_ms_pass"), rel=1e-6)  # ≈2.2 % of a core
    # without jitter the period is exactly ms_timer + ε + pass: sleep, then work, no catch-up
    exact = simulate("async-route:ms=10,ms_timer=1", [], 10.0).server.wakeups_by_role()
    period = 1e-3 + us("sleep_overshoot") + us("async_ms_pass")
    assert exact["async-ms-timer"] == math.floor(10.0 / period)


def test_without_core_async_workers_every_ms_deferral_strands_until_408_at_fr():
    fr = 1.0
    run = simulate(
        "async-route:ms=10,async_workers=0",
        [0.1, 0.37, 0.81],
        3.0,
        settings=ServerSettings(cores=2, fr_timer=fr),
    )
    calls = [f"call-{i}@uac" for i in range(3)]
    assert not run.relayed()
    assert sorted(first_408s(run)) == calls
    assert_408_at_fr(run, calls, fr)
    assert run.server.counters[am.STRANDED_LEAKED] == 3
    assert run.server.counters["task_pushed_without_workers"] == 3
    assert run.server.task_groups["default"].leaked == 3
    assert {d.outcome for d in run.server.deferrals.values()} == {"timed_out"}


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("async-route:ms=0", am.REJECTED_MS_RANGE),
        ("async-route:ms=30000", am.REJECTED_MS_RANGE),
        ("async-sleep:ms=30000", am.REJECTED_MS_RANGE),
        ("async-route:s=0", am.REJECTED_S_RANGE),
        ("async-route:s=100", am.REJECTED_S_RANGE),
        ("async-sleep:s=100", am.REJECTED_S_RANGE),
        ("async-route:ms=10,workers=0", am.REJECTED_NO_WORKERS),
        ("async-route:s=1,workers=0", am.REJECTED_NO_WORKERS),
        ("async-route:ms=10,ms_timer=0", am.REJECTED_MS_TIMER_OFF),
    ],
)
def test_rejected_calls_return_minus_one_and_the_request_is_relayed_undelayed(spec, reason):
    arrivals = [0.1, 0.35, 0.6]
    run = simulate(spec, arrivals, 1.0)
    relayed = first_relays(run)
    assert [round(relayed[f"call-{i}@uac"] - t, 9) for i, t in enumerate(arrivals)] == [
        round(us("request") + us("relay"), 9)
    ] * 3
    assert not run.server.deferrals  # never suspended
    assert run.server.counters == {reason: 3, am.RELAYED_UNDELAYED: 3}


def test_largest_accepted_delays_are_suspended():
    for spec in ("async-route:ms=29999", "async-route:s=99"):
        run = simulate(spec, [0.1], 1.0)
        assert len(run.server.deferrals) == 1 and not run.relayed(), spec
        assert not run.server.counters


def test_workers_zero_forks_no_async_timer_and_ms_timer_zero_no_ms_timer():
    roles = [p.role for p in simulate("async-route:workers=0", [], 0.1).server.processes]
    assert "async-timer" not in roles and "async-ms-timer" not in roles
    roles = [p.role for p in simulate("async-route:ms_timer=0", [], 0.1).server.processes]
    assert roles.count("async-timer") == 1 and "async-ms-timer" not in roles


def test_full_ms_list_rejects_and_relays_undelayed():
    n = am.MAX_MS_SLEEP_QUEUE + 60
    arrivals = [0.01 + i * 50e-6 for i in range(n)]
    run = simulate("async-route:ms=29999", arrivals, arrivals[-1] + 0.05)
    suspended = len(run.server.deferrals)
    rejected = run.server.counters[am.REJECTED_MS_FULL]
    assert suspended + rejected == n and rejected > 0
    # the cap is read without the lock: soft, overshot by at most the other SIP workers
    ms_list = run.server.strategy.module(run.server).ms_list
    assert am.MAX_MS_SLEEP_QUEUE <= ms_list.max_len == suspended < am.MAX_MS_SLEEP_QUEUE + 8
    assert len(first_relays(run)) == rejected == run.server.counters[am.RELAYED_UNDELAYED]


def test_async_sleep_times_exactly_like_async_route():
    arrivals = [0.05 + i * 0.0071 for i in range(80)]
    route = simulate("async-route:ms=10", arrivals, 1.0)
    sleep = simulate("async-sleep:ms=10", arrivals, 1.0)
    assert route.delays() == sleep.delays()
    assert first_relays(route) == first_relays(sleep)
    seconds = [0.3, 1.4, 2.45]
    route = simulate("async-route:s=1", seconds, 4.0)
    sleep = simulate("async-sleep:s=1", seconds, 4.0)
    assert route.delays() == sleep.delays() and len(sleep.delays()) == 3


def _overloaded_task_pool(nonblock: int, n: int, spacing: float, fr: float, until: float):
    """One task worker whose continuation takes 10 ms, fed faster than it can go."""
    costs = EXACT.with_values(t_continue=10_000.0)
    arrivals = [0.01 + i * spacing for i in range(n)]
    run = simulate(
        f"async-route:ms=10,async_workers=1,async_nonblock={nonblock}",
        arrivals,
        until,
        settings=ServerSettings(cores=2, fr_timer=fr),
        costs=costs,
    )
    return run, costs


def test_nonblocking_push_on_a_full_task_socket_strands_until_408():
    fr = 10.0
    run, costs = _overloaded_task_pool(1, 400, 20e-6, fr, fr + 1.0)
    refused = run.server.counters[am.STRANDED_REFUSED]
    assert refused == run.server.counters["task_push_refused"] > 0
    assert run.server.task_groups["default"].queue.max_depth == 278
    stranded = sorted(set(suspend_times(run)) - set(first_relays(run)))
    assert len(stranded) == refused and len(first_relays(run)) == 400 - refused
    assert_408_at_fr(run, stranded, fr, costs)


def test_blocking_push_on_a_full_task_socket_stalls_the_timer_and_inserting_sip_workers():
    run, _ = _overloaded_task_pool(0, 600, 100e-6, 30.0, 7.0)
    counters = run.server.counters
    assert counters[am.TIMER_PUSH_BLOCKED] > 0 and counters[am.LOCK_WAITS] > 0
    assert "task_push_refused" not in counters and not run.responses(408)
    assert len(first_relays(run)) == 600  # backpressure, nothing lost
    # every SIP worker ends up waiting on the list lock, so new requests sit in the UDP
    # buffer: arrival -> suspend (its 100 Trying) stretches from µs to seconds
    assert max(_arrival_to_suspend(run, 600, 100e-6)) > 1.0
    unblocked, _ = _overloaded_task_pool(1, 600, 100e-6, 30.0, 1.0)
    assert max(_arrival_to_suspend(unblocked, 600, 100e-6)) < 1e-3


def _arrival_to_suspend(run: SimRun, n: int, spacing: float) -> list[float]:
    suspended = suspend_times(run)
    return [suspended[f"call-{i}@uac"] - (0.01 + i * spacing) for i in range(n)]


# ---------------------------------------------------------------- seconds form (§2)


def test_seconds_form_resumes_up_to_a_second_early_in_the_next_second():
    arrivals = arrivals_away_from_second_boundaries(0.5, 0.0937, 60)
    run = simulate("async-route:s=1,ticks_start=0", arrivals, 8.0)
    delays = run.delays()
    assert len(delays) == len(arrivals) == len(first_relays(run))
    assert min(delays) > 0 and max(delays) < 2
    early = sum(d < 1.0 for d in delays) / len(delays)
    assert early > 0.9  # the timer's phase is just past the boundary: D = 1 - f + φ
    for d in run.server.deferrals.values():
        assert math.floor(d.resumed_at) == math.floor(d.suspended_at) + 1
        assert d.resumed_by == "ASYNC MOD TIMER #0"


def test_an_unset_tick_counter_start_is_a_draw_seeded_by_the_server_seed():
    arrivals = arrivals_away_from_second_boundaries(0.6, 0.0937, 60)
    starts = {}
    for seed in (1, 2, 3):
        run = simulate("async-route:s=1", arrivals, 4.0, settings=ServerSettings(seed=seed))
        starts[seed] = run.server.strategy.module(run.server).ticks_start
        again = simulate("async-route:s=1", arrivals, 4.0, settings=ServerSettings(seed=seed))
        assert again.delays() == run.delays()  # the same seed, the same draw
    assert len(set(starts.values())) == 3


def test_tick_counter_start_moves_the_second_boundary_and_the_early_share():
    # *ticks starting at 8 puts get_ticks()'s boundaries at 0.5 s, 1.5 s...; the timer still
    # wakes just after whole seconds since start, so D ∈ (0.5, 1.5] and about half are early
    arrivals = [a for a in arrivals_away_from_second_boundaries(0.6, 0.0937, 60) if a % 1 != 0.5]
    run = simulate("async-route:s=1,ticks_start=8", arrivals, 8.0)
    delays = run.delays()
    assert len(delays) == len(arrivals)
    assert min(delays) > 0.5 and max(delays) < 1.5 + 0.001
    assert 0.35 < sum(d < 1.0 for d in delays) / len(delays) < 0.65
    for d in run.server.deferrals.values():
        assert math.floor(d.resumed_at + 0.5) == math.floor(d.suspended_at + 0.5) + 1


def test_seconds_form_is_lifo_within_one_second():
    run = simulate("async-route:s=1,workers=1,ticks_start=0", [2.2, 2.6, 3.1], 5.0)
    relays = first_relays(run)
    order = sorted(relays, key=relays.get)
    assert order == ["call-1@uac", "call-0@uac", "call-2@uac"]
    resumed = {d.suspended_at: d.resumed_at for d in run.server.deferrals.values()}
    t0, t1, t2 = sorted(resumed)
    assert resumed[t1] < resumed[t0] < 3.01 < resumed[t2]


def test_a_timer_whose_phase_wraps_skips_a_second_and_its_items_end_in_408():
    # a 0.3 s pass makes the worker's phase wrap fast: wakes at ≈1.0, 2.3, 3.6, 4.9, 6.2 s,
    # so second 5 is never visited; what was due in it waits ~100 s, i.e. for its 408
    costs = EXACT.with_values(async_s_pass=300_000.0)
    fr = 3.0
    run = simulate(
        "async-route:s=1,ticks_start=0",
        [3.2, 4.5],
        8.0,
        settings=ServerSettings(cores=2, fr_timer=fr),
        costs=costs,
    )
    assert run.server.counters[am.SECONDS_SKIPPED] == 1
    assert list(first_relays(run)) == ["call-0@uac"]
    assert_408_at_fr(run, ["call-1@uac"], fr, costs)
    ring = run.server.strategy.module(run.server).ring
    assert ring.slot_size(5) == 1  # still queued: the ring comes round only at second 105
