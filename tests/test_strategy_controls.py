"""The controls: `inline` (no deferral), `blocking-sleep` (usleep in the SIP worker, §9) and
`async-task` (hand-off to the core task pool, §4). Virtual time, `EXACT` costs."""

from __future__ import annotations

import math

import pytest
from simkit import UAC, UAS, simulate

from core.runtime.costs import EXACT
from core.runtime.server import TICK, ServerSettings
from strategies import parse_spec

S = EXACT.seconds
EPS = S("sleep_overshoot")
ROOMY = ServerSettings(cores=16)


def first_relay(run) -> dict[str, float]:
    """Call-ID -> when the proxy first forwarded its re-INVITE to the UAS."""
    times: dict[str, float] = {}
    for sent in run.relayed():
        times.setdefault(sent.message.call_id, sent.time)
    return times


def call_id(n: int) -> str:
    return f"call-{n}@uac"


def strategy_wakeups(run) -> int:
    core_roles = {"sip-worker", "timer", "slow-timer"}
    return sum(n for role, n in run.server.wakeups_by_role().items() if role not in core_roles)


# --------------------------------------------------------------------------- inline


def test_inline_relays_at_once_in_the_sip_worker():
    run = simulate("inline", [0.001, 0.5], 1.0)
    relays = first_relay(run)
    assert relays[call_id(0)] == pytest.approx(0.001 + S("request") + S("relay"), abs=1e-12)
    assert relays[call_id(1)] == pytest.approx(0.5 + S("request") + S("relay"), abs=1e-12)
    assert run.server.deferrals == {}  # nothing suspended
    assert run.server.strategy.requested_delay == 0
    assert {p.role for p in run.server.processes} == {"sip-worker", "timer", "slow-timer"}
    assert not run.responses(408)


# --------------------------------------------------------------------------- blocking-sleep


def test_blocking_sleep_delays_by_ms_plus_overshoot_in_the_worker_holding_no_cpu():
    run = simulate("blocking-sleep:ms=10", [0.001, 0.3, 0.6], 1.0)
    assert run.delays() == pytest.approx([0.010 + EPS] * 3, abs=1e-12)
    relays = first_relay(run)
    service = S("request") + S("relay")
    assert relays[call_id(0)] == pytest.approx(0.001 + service + 0.010 + EPS, abs=1e-12)
    assert all(d.resumed_by.startswith("udp receiver") for d in run.server.deferrals.values())
    assert run.server.busy_by_role()["sip-worker"] == pytest.approx(3 * service)  # sleep is free
    assert run.server.strategy.requested_delay == 0.010


def test_blocking_sleep_wake_up_costs_the_worker_cpu_after_the_sleep_not_in_the_delay():
    woken = EXACT.with_values(sleep_wake=200.0)
    run = simulate("blocking-sleep:ms=10", [0.001, 0.3, 0.6], 1.0, costs=woken)
    assert run.delays() == pytest.approx([0.010 + EPS] * 3, abs=1e-12)  # D: the sleep alone
    relays = first_relay(run)
    service = S("request") + S("relay")
    assert relays[call_id(0)] == pytest.approx(0.001 + service + 0.010 + EPS + 200e-6, abs=1e-12)
    plain = simulate("blocking-sleep:ms=10", [0.001, 0.3, 0.6], 1.0)
    extra = run.server.cpu.busy_total - plain.server.cpu.busy_total
    assert extra == pytest.approx(3 * 200e-6, abs=1e-12)  # once per re-INVITE


def test_blocking_sleep_saturates_at_children_per_sleep_and_latency_grows_linearly():
    settings = ServerSettings(children=2, cores=2, maxbuffer=100 * 1024 * 1024)
    capacity = 2 / (0.010 + EPS + S("request") + S("relay"))  # ≈ 197.5/s
    rate = 400.0
    arrivals = [i / rate for i in range(int(rate * 2))]
    run = simulate("blocking-sleep:ms=10", arrivals, 2.0, settings=settings)
    relays = first_relay(run)
    window = [t for t in relays.values() if 0.5 <= t < 2.0]
    assert len(window) / 1.5 == pytest.approx(capacity, rel=0.01)
    # request k waits for the k requests before it: latency = k (1/capacity - 1/rate)
    latency = {k: relays[call_id(k)] - arrivals[k] for k in (100, 200, 300)}
    slope = 1 / capacity - 1 / rate
    assert latency[200] - latency[100] == pytest.approx(100 * slope, rel=0.02)
    assert latency[300] - latency[200] == pytest.approx(100 * slope, rel=0.02)
    assert run.delays()[-1] == pytest.approx(0.010 + EPS)  # D itself never grows
    assert not run.server.counters


def test_blocking_sleep_overload_fills_the_receive_buffer_then_the_kernel_drops():
    settings = ServerSettings(children=2, cores=2)  # maxbuffer 256 KiB: 256 datagrams
    rate = 400.0
    arrivals = [i / rate for i in range(int(rate * 3))]
    run = simulate("blocking-sleep:ms=10", arrivals, 3.0, settings=settings)
    drops = run.server.counters["udp_receive_buffer_drops"]
    assert drops > 0
    capacity = 2 / (0.010 + EPS + S("request") + S("relay"))
    relays = first_relay(run)
    latencies = [
        relays[call_id(k)] - arrivals[k] for k in range(len(arrivals)) if call_id(k) in relays
    ]
    assert max(latencies) <= (256 + 2) / capacity + 0.011  # plateau: a full buffer, no more
    assert max(latencies) > 250 / capacity


# --------------------------------------------------------------------------- async-task


def test_async_task_resumes_after_the_hand_off_only():
    run = simulate("async-task", [0.001, 0.2], 0.5, settings=ROOMY)
    hand_off = S("task_push") + S("task_receive") + S("t_continue")
    assert run.delays() == pytest.approx([hand_off] * 2, abs=1e-12)  # no timer, ≈ 41 µs
    assert all(
        d.resumed_by.startswith("Async Task Worker - default")
        for d in run.server.deferrals.values()
    )
    assert run.server.strategy.requested_delay == 0
    assert sum(1 for p in run.server.processes if p.role == "async-task-worker") == 4


def test_async_task_idle_has_no_strategy_wakeups():
    run = simulate("async-task", [], 10.0)
    assert strategy_wakeups(run) == 0
    assert run.server.busy_by_role().get("async-task-worker", 0.0) == 0.0


def test_async_task_usleep_bounds_each_worker():
    run = simulate("async-task:async_workers=1,usleep=1000", [0.001] * 30, 0.2, settings=ROOMY)
    done = sorted(d.resumed_at for d in run.server.deferrals.values())
    assert len(done) == 30
    cycle = 0.001 + S("task_receive") + S("t_continue") + S("relay")
    gaps = [b - a for a, b in zip(done, done[1:], strict=False)]
    assert all(cycle - 1e-12 <= gap <= cycle + EPS + 1e-12 for gap in gaps)


def overload(spec: str):
    """2000 re-INVITEs/s for 0.2 s into one task worker doing 1 task per ~5 ms."""
    settings = ServerSettings(cores=4, fr_timer=3.0)
    arrivals = [0.001 + i / 2000 for i in range(400)]
    return simulate(spec, arrivals, 3.4, settings=settings)


def test_async_task_nonblock_full_socket_refuses_the_push_and_strands_until_408():
    run = overload("async-task:async_workers=1,usleep=5000,nonblock=1")
    refused = run.server.counters["task_push_refused"]
    assert refused > 0
    assert run.server.counters["async_task_push_failed_stranded"] == refused
    (group,) = run.server.task_groups.values()
    assert group.queue.max_depth == group.config.capacity  # ≈278 pending: the socket's bound
    stranded = [d for d in run.server.deferrals.values() if d.resumes == 0]
    assert len(stranded) == refused
    assert all(d.outcome == "timed_out" for d in stranded)
    timeouts = {s.message.call_id: s for s in run.responses(408) if s.destination == UAC}
    for deferral in stranded:
        sent = timeouts[deferral.call_id]
        ticks = math.floor(deferral.suspended_at / TICK + 1e-9) + math.ceil(3.0 / TICK - 1e-9)
        assert ticks * TICK <= sent.time < ticks * TICK + 0.005  # the fr tick formula
    resumed = [d for d in run.server.deferrals.values() if d.resumes == 1]
    assert len(resumed) + len(stranded) == 400


def test_async_task_blocking_push_stalls_the_sip_workers_instead():
    run = overload("async-task:async_workers=1,usleep=5000,nonblock=0")
    (group,) = run.server.task_groups.values()
    assert group.blocked_pushes > 0 and group.refused == 0
    assert "task_push_refused" not in run.server.counters
    assert all(d.resumes == 1 for d in run.server.deferrals.values())
    assert len(run.server.deferrals) == 400
    # while the workers are stuck in write(), requests wait in the UDP socket instead
    assert run.server.sip_socket.max_depth > 50


# --------------------------------------------------------------------------- kamailio.cfg


def test_cfgs_follow_the_parameters():
    inline = parse_spec("inline").kamailio_config()
    defer = inline[inline.index("route[DEFER]") :]
    assert "route(RELAY);" in defer and "t_suspend();" not in inline
    sleep = parse_spec("blocking-sleep:ms=25").kamailio_config()
    assert "usleep(25000);" in sleep and 'loadmodule "cfgutils.so"' in sleep
    assert sleep.index("usleep(25000)") < sleep.index("route(RELAY);", sleep.index("route[DEFER]"))
    task = parse_spec("async-task:async_workers=6,nonblock=1,usleep=50").kamailio_config()
    assert task.index("async_workers=6") < task.index("async_nonblock=1")
    assert task.index("async_workers=6") < task.index("async_usleep=50")
    assert 'async_task_route("RESUME");' in task and "route[RESUME]" in task
    assert 'modparam("async", "workers", 0)' in task
    for cfg in (inline, sleep, task):
        assert cfg.index("t_check_trans()") < cfg.index("route(DEFER)")
        assert "record_route()" in cfg and "loose_route()" in cfg


def test_cfg_carries_server_settings():
    settings = ServerSettings(children=3, fr_timer=1.5, address=("10.0.0.1", 5070))
    cfg = parse_spec("async-task").kamailio_config(settings)
    assert "children=3" in cfg and "listen=udp:10.0.0.1:5070" in cfg
    assert 'modparam("tm", "fr_timer", 1500)' in cfg


def test_sent_addresses_are_the_simkit_peers():
    run = simulate("inline", [0.001], 0.1)
    assert {s.destination for s in run.sent} <= {UAC, UAS}
