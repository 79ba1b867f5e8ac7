"""mqueue-rtimer: the queue's drop policies and the timing of N sleep-then-run pollers (§6–§8).

Virtual time with `EXACT` costs (no overshoot jitter), so every bound below is computed
from the cost profile and asserted exactly; `cores=16` where CPU contention would blur it.
"""

from __future__ import annotations

import math
import zlib

import pytest
from simkit import UAC, reinvite, simulate, simulate_probed

from core.events import TxnId
from core.runtime.costs import EXACT, CostProfile
from core.runtime.server import TICK, ServerSettings
from strategies import parse_spec
from strategies.mqueue_rtimer import DROP_COUNTERS, MessageQueue, QueuedItem

S = EXACT.seconds
EPS = S("sleep_overshoot")
INTERVAL = 0.010
ROOMY = ServerSettings(cores=16)  # no CPU contention: timings are the model's, exactly


def item(n: int, key: int | None = None) -> QueuedItem:
    return QueuedItem(n if key is None else key, TxnId(n if key is None else key, n), 0.0)


def pool(run):
    return run.server.strategy.pool(run.server)


def resumed(run):
    return [d for d in run.server.deferrals.values() if d.resumed_at is not None]


def spread(n: int, start: float, rate: float) -> list[float]:
    """n arrivals at `rate`/s, nudged by an irrational step so they sample every timer phase."""
    step = 1 / rate
    return [start + i * step + (i * 0.000_618_034) % step * 0.01 for i in range(n)]


# --------------------------------------------------------------------------- the queue


def test_addmode0_overflow_frees_the_oldest_and_still_succeeds():
    queue = MessageQueue("dq", size=3, addmode=0)
    drops = [queue.add(item(n)) for n in range(1, 6)]
    assert len(queue) == 3
    assert [d[0][1].txn.label for d in drops if d] == [1, 2]
    assert {reason for d in drops for reason, _ in d} == {"overflow"}
    assert queue.fetch().txn.label == 3  # (E) size=3, 5 adds: the first fetch returns item 3
    assert [queue.fetch().txn.label for _ in range(2)] == [4, 5]
    assert queue.fetch() is None


def test_addmode1_duplicate_key_drops_the_new_item():
    queue = MessageQueue("dq", addmode=1)
    assert queue.add(QueuedItem(7, TxnId(7, 1), 0.0)) == []
    dropped = queue.add(QueuedItem(7, TxnId(7, 2), 0.0))
    assert [(r, i.txn.label) for r, i in dropped] == [("duplicate_new", 2)]
    assert queue.fetch().txn.label == 1 and queue.fetch() is None
    assert queue.add(QueuedItem(7, TxnId(7, 3), 0.0)) == []  # key free again after the fetch


def test_addmode2_duplicate_key_removes_the_old_item_and_appends_the_new():
    queue = MessageQueue("dq", addmode=2)
    for key, label in ((7, 1), (8, 2), (7, 3)):
        dropped = queue.add(QueuedItem(key, TxnId(key, label), 0.0))
    assert [(r, i.txn.label) for r, i in dropped] == [("duplicate_old", 1)]
    assert [queue.fetch().txn.label for _ in range(2)] == [2, 3]  # new one at the tail


def test_size_applies_in_every_addmode():
    queue = MessageQueue("dq", size=2, addmode=1)
    for n in range(4):
        queue.add(item(n))
    assert len(queue) == 2 and queue.dropped["overflow"] == 2
    assert queue.add(item(3)) == [("duplicate_new", item(3))]


# --------------------------------------------------------------------------- timing


def test_low_load_resumes_within_one_period_not_after_the_interval():
    run = simulate("mqueue-rtimer", spread(200, 0.05, 50), 4.3, settings=ROOMY)
    done = resumed(run)
    assert len(done) == 200
    assert all(d.resumed_by.startswith("RTIMER EXEC child=") for d in done)
    # an item waits for ANY timer's next pass: D in [0, P) + the pass up to the resume
    bound = INTERVAL + EPS + S("rtimer_pass") + S("mq_fetch_item") + S("t_continue")
    delays = [d.delay for d in done]
    assert min(delays) >= 0
    assert max(delays) <= bound + 1e-9
    # ... so the "intended 10 ms" is not honoured: about half resume in under 5 ms
    assert 0.35 < sum(x < INTERVAL / 2 for x in delays) / len(delays) < 0.65
    assert sum(x < INTERVAL for x in delays) / len(delays) > 0.95


def test_take_one_saturates_at_timers_per_period_and_the_backlog_grows_linearly():
    period = (
        INTERVAL + EPS + sum(S(c) for c in ("rtimer_pass", "mq_fetch_item", "t_continue", "relay"))
    )
    capacity = 12 / period  # ≈ 1184/s with the default costs
    rate = 2 * capacity
    probes = [(t, lambda s: len(s.strategy.pool(s).queue)) for t in (1.0, 1.5, 2.0, 2.5, 3.0)]
    run, depths = simulate_probed(
        "mqueue-rtimer", spread(int(rate * 3.05), 0.0, rate), 3.0, probes, settings=ROOMY
    )
    in_window = [d for d in resumed(run) if 1.0 <= d.resumed_at < 3.0]
    assert len(in_window) / 2.0 == pytest.approx(capacity, rel=0.01)
    steps = [b - a for (_, a), (_, b) in zip(depths, depths[1:], strict=False)]
    assert all(step == pytest.approx((rate - capacity) * 0.5, rel=0.03) for step in steps)
    assert run.server.counters == {}  # nothing dropped, nothing stranded: it only waits


def test_take_all_clears_a_burst_in_one_tick_take_one_needs_many():
    burst = [0.012] * 200  # queued by ~0.0134 s; the clustered timers next pass at ~0.0202 s
    drained = simulate("mqueue-rtimer:take=all", burst, 0.1, settings=ROOMY)
    one = simulate("mqueue-rtimer:take=one", burst, 0.5, settings=ROOMY)
    first_tick = 2 * (INTERVAL + EPS) + S("rtimer_pass") + S("mq_fetch_empty")
    times = sorted(d.resumed_at for d in resumed(drained))
    assert len(times) == 200
    assert times[0] > first_tick and times[-1] < first_tick + INTERVAL  # within one tick
    times_one = sorted(d.resumed_at for d in resumed(one))
    assert len(times_one) == 200
    assert times_one[-1] - times_one[0] > (math.ceil(200 / 12) - 1) * INTERVAL  # 17 ticks


def test_take_all_with_one_timer_resumes_the_whole_burst_in_its_one_pass():
    run = simulate("mqueue-rtimer:timers=1,take=all", [0.003] * 20, 0.05, settings=ROOMY)
    done = sorted(resumed(run), key=lambda d: d.resumed_at)
    assert len(done) == 20 and {d.resumed_by for d in done} == {"RTIMER EXEC child=0 timer=dq"}
    per_item = S("mq_fetch_item") + S("t_continue") + S("relay")
    gaps = [b.resumed_at - a.resumed_at for a, b in zip(done, done[1:], strict=False)]
    assert gaps == pytest.approx([per_item] * 19)  # back to back, no sleep in between
    assert [d.cseq for d in done] == [2] * 20
    assert [d.call_id for d in done] == [f"call-{n}@uac" for n in range(20)]  # FIFO


def test_a_slow_continuation_pushes_back_the_next_tick_of_the_timer_that_ran_it():
    slow = EXACT.with_values(t_continue=5000.0)  # 5 ms continuation (e.g. a DNS lookup)
    first = simulate("mqueue-rtimer", [0.003], 0.02, settings=ROOMY, costs=slow)
    (deferral,) = resumed(first)
    name = deferral.resumed_by
    woke = deferral.resumed_at - (
        slow.seconds("rtimer_pass") + slow.seconds("mq_fetch_item") + slow.seconds("t_continue")
    )
    usual = woke + slow.seconds("rtimer_pass") + slow.seconds("mq_fetch_empty") + INTERVAL + EPS
    delayed = deferral.resumed_at + slow.seconds("relay") + INTERVAL + EPS

    def wakeups(server):
        return {p.name: p.wakeups for p in server.strategy.pool(server).processes}

    # the siblings were forked up to 11 fork gaps later: one window covers all their ticks
    window = (usual - 1e-6, usual + 11 * S("fork_gap") + 1e-6, delayed - 1e-6, delayed + 1e-6)
    _, seen = simulate_probed(
        "mqueue-rtimer", [0.003], 0.05, [(t, wakeups) for t in window], settings=ROOMY, costs=slow
    )
    (_, a), (_, b), (_, c), (_, d) = seen
    assert b[name] == a[name]  # did NOT wake at its usual time ...
    assert d[name] == c[name] + 1  # ... but exactly the continuation's length later
    assert all(b[n] == a[n] + 1 for n in a if n != name)  # its siblings kept their cadence


# --------------------------------------------------------------------------- min_age


def test_min_age_never_resumes_early_and_costs_timer_capacity():
    spec = "mqueue-rtimer:min_age=10ms"
    arrivals = spread(1800, 0.05, 600)
    corrected = simulate(spec, arrivals, 3.2, settings=ROOMY)
    seed = simulate("mqueue-rtimer", arrivals, 3.2, settings=ROOMY)
    assert corrected.server.strategy.requested_delay == 0.010
    delays = [d.delay for d in resumed(corrected)]
    assert len(delays) == 1800
    assert min(delays) >= 0.010  # never before min_age
    assert max(delays) <= 0.010 + EPS + S("t_continue") + 1e-9  # slept out exactly to it
    assert min(d.delay for d in resumed(seed)) < 0.001  # the seed resumes almost at once
    # the price: each young item blocks its timer while it sleeps out the rest; at 600/s
    # about half of the 12 timers' time goes to sleeping, none with the seed
    gone = pool(corrected).slept_out / (12 * 3.0)
    assert pool(corrected).sleep_outs == 1800 and 0.4 < gone < 0.6
    assert pool(seed).sleep_outs == 0
    assert pool(corrected).passes < pool(seed).passes * 0.75  # no polling while asleep


def test_min_age_still_reaches_the_seed_capacity_once_items_are_old():
    rate = 450  # 1.5x the capacity of 3 timers: popped items are older than min_age
    arrivals = spread(1350, 0.0, rate)
    corrected = simulate("mqueue-rtimer:timers=3,min_age=10ms", arrivals, 3.0, settings=ROOMY)
    seed = simulate("mqueue-rtimer:timers=3", arrivals, 3.0, settings=ROOMY)
    window = [sum(1 for d in resumed(r) if 1.0 <= d.resumed_at < 3.0) for r in (corrected, seed)]
    assert window[0] == pytest.approx(window[1], rel=0.01)
    assert window[1] / 2.0 < rate * 0.7  # saturated
    assert min(d.delay for d in resumed(corrected)) >= 0.010


# --------------------------------------------------------------------------- idle CPU


def test_idle_wakeups_twelve_timers_at_10ms():
    run = simulate("mqueue-rtimer", [], 10.0, costs=CostProfile())
    wakeups = run.server.wakeups_by_role()
    period = INTERVAL + EPS + S("rtimer_pass") + S("mq_fetch_empty")
    assert wakeups["rtimer"] / 10.0 == pytest.approx(12 / period, rel=0.003)  # ≈ 1,190/s
    assert wakeups["rtimer"] / 10.0 == pytest.approx(1190, abs=5)
    assert wakeups.get("sip-worker", 0) == 0


def test_timers_are_forked_in_sequence_a_few_microseconds_apart():
    first = INTERVAL + EPS

    def awake(server):
        return sum(p.wakeups for p in server.strategy.pool(server).processes)

    probes = [(first + (k + 0.5) * S("fork_gap"), awake) for k in range(12)]
    _, seen = simulate_probed("mqueue-rtimer", [], 0.015, probes, settings=ROOMY)
    assert [n for _, n in seen] == list(range(1, 13))  # one more child every fork gap


# --------------------------------------------------------------------------- overflow


def test_overflow_drops_the_oldest_which_end_in_408_at_the_fr_tick():
    settings = ServerSettings(cores=16, fr_timer=1.0)
    run = simulate("mqueue-rtimer:size=3", [0.012] * 10, 1.2, settings=settings)
    assert run.server.counters[DROP_COUNTERS["overflow"]] == 7
    kept = sorted(d.call_id for d in resumed(run))
    assert len(kept) == 3
    order = sorted(run.server.deferrals.values(), key=lambda d: d.suspended_at)
    dropped = {d.call_id: d for d in order[:7]}  # the 7 OLDEST went, silently
    assert set(kept) == {d.call_id for d in order[7:]}
    # (the kept three get a 408 too, later: nobody answers their relayed INVITE here)
    timeouts = [s for s in run.responses(408) if s.message.call_id in dropped]
    assert sorted(s.message.call_id for s in timeouts) == sorted(dropped)
    assert all(s.destination == UAC for s in timeouts)
    for sent in timeouts:
        suspended = dropped[sent.message.call_id].suspended_at
        t_out = (math.floor(suspended / TICK + 1e-9) + math.ceil(1.0 / TICK - 1e-9)) * TICK
        assert t_out <= sent.time < t_out + 0.001  # the tick formula, plus the 408's cost
        assert dropped[sent.message.call_id].outcome == "timed_out"


def colliding_calls() -> tuple[tuple[int, int], tuple[int, int]]:
    """Two (call, CSeq) re-INVITEs whose transactions share a hash index ($T(id_index))."""
    seen: dict[int, tuple[int, int]] = {}
    for cseq in range(2, 400):
        for call in range(100_000, 100_200):
            index = zlib.crc32(f"call-{call}@uac {cseq}".encode()) & 0xFFFF
            if index in seen and seen[index][0] != call:
                return seen[index], (call, cseq)
            seen[index] = (call, cseq)
    raise AssertionError("no collision found")


@pytest.mark.parametrize(
    ("addmode", "lost", "counter"),
    [
        (1, "second", "mqueue_duplicate_key_dropped_new"),
        (2, "first", "mqueue_duplicate_key_removed_old"),
    ],
)
def test_a_hash_index_collision_strands_one_call_with_addmode_1_or_2(addmode, lost, counter):
    first, second = colliding_calls()

    def send(call_cseq):
        return lambda server: server.receive(reinvite(*call_cseq), UAC)

    settings = ServerSettings(cores=16, fr_timer=0.5)
    probes = [(0.012, send(first)), (0.0121, send(second))]
    run, _ = simulate_probed(f"mqueue-rtimer:addmode={addmode}", [], 0.7, probes, settings=settings)
    ids = {d.call_id: d for d in run.server.deferrals.values()}
    a, b = (ids[f"call-{c}@uac"] for c, _ in (first, second))
    assert a.txn.index == b.txn.index  # the proxy put them in one bucket
    assert run.server.counters[counter] == 1
    stranded, kept = (b, a) if lost == "second" else (a, b)
    assert kept.outcome == "resumed" and stranded.outcome == "timed_out"
    (timeout,) = [s for s in run.responses(408) if s.message.call_id == stranded.call_id]
    t_out = (math.floor(stranded.suspended_at / TICK + 1e-9) + math.ceil(0.5 / TICK - 1e-9)) * TICK
    assert timeout.destination == UAC and t_out <= timeout.time < t_out + 0.001
    assert stranded.call_id not in {s.message.call_id for s in run.relayed()}
    assert kept.call_id in {s.message.call_id for s in run.relayed()}


# --------------------------------------------------------------------------- kamailio.cfg


def test_cfg_forks_n_processes_and_pops_one_per_pass():
    cfg = parse_spec("mqueue-rtimer").kamailio_config()
    assert 'modparam("rtimer", "timer", "name=dq;interval=10000u;mode=12")' in cfg
    assert 'modparam("mqueue", "mqueue", "name=dq;size=0;addmode=0")' in cfg
    assert cfg.index("t_check_trans()") < cfg.index("route(DEFER)")
    assert 'mq_add("dq", "$T(id_index)", "$T(id_label)")' in cfg
    assert "$(mqk(dq){s.int})" in cfg and "$(mqv(dq){s.int})" in cfg
    poll = cfg[cfg.index("route[DQ_POLL]") :]
    assert poll.index("t_continue(") < poll.index("return;") < poll.index("route[RESUME]")
    assert "usleep" not in cfg


def test_cfg_variants_follow_the_parameters():
    drain = parse_spec("mqueue-rtimer:timers=3,interval=2ms,take=all,size=50,addmode=2")
    cfg = drain.kamailio_config()
    assert "interval=2000u;mode=3" in cfg and "size=50;addmode=2" in cfg
    assert "return;" not in cfg[cfg.index("route[DQ_POLL]") :]
    assert "FREES THE OLDEST" in cfg and "REMOVES THE OLD" in cfg
    aged = parse_spec("mqueue-rtimer:min_age=15ms").kamailio_config()
    assert '"$T(id_label):$TV(Sn)"' in aged and "$var(now) = $TV(Sn);" in aged
    assert "if ($var(age) < 15000)" in aged and 'usleep("$var(rest)")' in aged
    assert 'loadmodule "cfgutils.so"' in aged
