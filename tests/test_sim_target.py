"""The sim target (harness.targets.sim): the full call flow through the modelled proxy.

Loads are small (a few virtual seconds) so each run takes well under a second of wall time.
"""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import strategies
from core.runtime import kernel as kernel_module
from core.runtime.kernel import Kernel, run_on_virtual_time
from core.runtime.server import ServerSettings
from harness.load.network import PROXY, UAC, UAS, Link, SimNetwork
from harness.load.spec import LoadSpec, parse_load, schedule
from harness.measure.ledger import OUTCOMES
from harness.measure.results import SCHEMA, RunResult
from harness.targets.sim import DRAIN_GRACE, Links, SimTarget, simulate
from strategies.spec import SpecError
from tests.simkit import reinvite

SETTINGS = ServerSettings(cores=2, children=4)
NO_IDLE = SimTarget(measure_idle=False)  # the loaded run only: cpu.idle_share is null
SMALL = parse_load("reinvite:rate=10/s,duration=1s,reinvites=3,gap=1ms")
# gap 0: the re-INVITE leaves with the ACK of the previous 2xx, so only deferral keeps order
RACY = parse_load("reinvite:rate=20/s,duration=2s,reinvites=5,gap=0ms")
WALL_CLOCK = ("wall_seconds", "sim_txn_per_wall_s")


def without_wall_clock(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in WALL_CLOCK}


def as_document(result: dict, load: LoadSpec) -> dict:
    """A whole result file around one strategy entry, as `deferbench run` writes it."""
    return {
        "schema": SCHEMA,
        "tool_version": "test",
        "created": "2025-01-01T00:00:00Z",
        "command": ["deferbench", "run"],
        "target": "sim",
        "backend": None,
        "load": {
            "spec": load.spec,
            "fields": load.fields(),
            "call_rate": load.call_rate,
            "reinvite_rate": load.reinvite_rate,
        },
        "seed": result["seed"],
        "server": {"children": 4, "cores": 2, "fr_timer_ms": 30000},
        "machine": {"platform": "x", "python": "3.11", "cpu_count": 2, "cpu_model": None},
        "strategies": [result],
    }


@pytest.mark.parametrize("spec", strategies.names())
def test_every_strategy_runs_the_call_flow_and_fits_the_result_schema(spec: str) -> None:
    run = simulate(spec, SMALL, 1, SETTINGS, keep_records=True)
    result = run.result

    parsed = RunResult.from_json(as_document(result, SMALL))  # strict reader: no ResultError
    entry = parsed.strategies[0]
    assert entry.strategy == strategies.parse_spec(spec).spec
    assert entry.target == "sim" and entry.load == SMALL.spec and entry.seed == 1
    # Every call played to its end; every re-INVITE the UAC sent has one outcome.
    planned = result["counters"]["calls planned"]
    assert planned == len(schedule(SMALL, 1)) > 0
    assert result["counters"]["uac: calls completed"] == planned
    assert result["counters"]["calls unfinished"] == 0
    ledger = entry.ledger
    assert ledger.transactions == planned * SMALL.reinvites == len(run.uac.timings)
    assert sum(ledger.outcomes().values()) == ledger.transactions
    assert ledger.unknown_events == 0 and ledger.duplicate_open == 0
    assert entry.cpu.idle_share is not None and entry.cpu.idle_share > 0
    assert entry.e2e_ms["p50"] is not None


def test_every_transaction_gets_exactly_one_outcome() -> None:
    run = simulate("inline", RACY, 7, SETTINGS, measure_idle=False, keep_records=True)
    keys = set(run.uac.timings)
    outcomes = [run.ledger.outcome(key) for key in keys]
    assert len(outcomes) == run.result["ledger"]["transactions"]
    for name in OUTCOMES:
        assert outcomes.count(name) == run.result["ledger"][name]
    # and the ledger's outcome agrees with the UAC's own view of each final response
    for key, timing in run.uac.timings.items():
        expected = "race_491" if timing.status == 491 else "resumed"
        assert run.ledger.outcome(key) == expected


def test_inline_lets_reinvites_overtake_acks_and_deferral_stops_it() -> None:
    inline = NO_IDLE.run("inline", RACY, 1, SETTINGS)
    assert inline["ledger"]["race_491"] > 0
    assert inline["counters"]["uas: races"] == inline["ledger"]["race_491"]
    for spec in ("async-route:ms=10", "mqueue-rtimer:min_age=10ms"):
        deferred = NO_IDLE.run(spec, RACY, 1, SETTINGS)
        ledger = deferred["ledger"]
        assert ledger["race_491"] == 0, spec
        assert ledger["resumed"] == ledger["transactions"] == inline["ledger"]["transactions"]


def test_same_seed_gives_the_same_result_and_another_seed_does_not() -> None:
    first = SimTarget().run("async-route:ms=10", RACY, 5, SETTINGS)
    second = SimTarget().run("async-route:ms=10", RACY, 5, SETTINGS)
    assert without_wall_clock(first) == without_wall_clock(second)
    other = SimTarget().run("async-route:ms=10", RACY, 6, SETTINGS)
    assert without_wall_clock(other) != without_wall_clock(first)


def test_bytes_on_the_wire_change_nothing_but_speed() -> None:
    objects = NO_IDLE.run("inline", RACY, 2, SETTINGS)
    serialised = SimTarget(measure_idle=False, wire="bytes").run("inline", RACY, 2, SETTINGS)
    assert without_wall_clock(serialised) == without_wall_clock(objects)


@pytest.mark.parametrize("spec", strategies.names())
def test_running_ahead_changes_nothing_but_speed(spec: str, monkeypatch) -> None:
    """A step with nothing due before its end runs ahead (`Kernel.run_ahead`) instead of a
    heap round trip: the same callbacks at the same times, so the same result, idle run and
    wake-up latency draws included."""
    ahead = SimTarget(driver="sipp").run(spec, RACY, 3, SETTINGS)
    monkeypatch.setattr(kernel_module, "RUN_AHEAD", False)
    posted = SimTarget(driver="sipp").run(spec, RACY, 3, SETTINGS)
    assert without_wall_clock(ahead) == without_wall_clock(posted)


def test_lossy_link_causes_retransmissions_that_are_absorbed_and_counted() -> None:
    load = parse_load("reinvite:rate=20/s,duration=3s,reinvites=5,gap=1ms")
    clean = NO_IDLE.run("async-route:ms=10", load, 3, SETTINGS)
    lossy = simulate(
        "async-route:ms=10",
        load,
        3,
        SETTINGS,
        links=Links(proxy_to_uac=Link(loss=0.25)),
        measure_idle=False,
    ).result
    assert clean["ledger"]["retransmissions"] == 0
    assert clean["counters"].get("proxy: retransmissions_absorbed", 0) == 0
    counters = lossy["counters"]
    assert counters["network: proxy->uac lost"] > 0
    assert lossy["ledger"]["retransmissions"] > 0
    # the ledger counts the re-INVITEs' retransmissions; the UAC counter adds the INVITEs'
    assert lossy["ledger"]["retransmissions"] <= counters["uac: INVITE retransmissions"]
    assert counters["proxy: retransmissions_absorbed"] > 0
    assert counters["uas: 2xx retransmitted"] > 0  # lost 200s: the UAS re-sends until ACKed
    # Absorbed, not lost: every transaction still ends in a 2xx, every call completes.
    ledger = lossy["ledger"]
    assert ledger["lost"] == 0 and ledger["resumed"] == ledger["transactions"]
    assert counters["calls unfinished"] == 0
    assert lossy["e2e_ms"]["max"] > clean["e2e_ms"]["max"] + 400  # a T1 retransmission


def test_e2e_latency_is_measured_from_the_intended_send_time_under_overload() -> None:
    """One SIP worker blocked 10 ms per re-INVITE serves < 100/s; 200/s are offered, so
    requests queue in the socket and e2e grows far beyond the 10 ms the sleep itself takes."""
    load = parse_load("reinvite:rate=40/s,duration=2s,reinvites=5,gap=1ms,arrival=constant")
    light = NO_IDLE.run("blocking-sleep:ms=10", load, 1, SETTINGS)
    one_worker = ServerSettings(cores=2, children=1)
    heavy = NO_IDLE.run("blocking-sleep:ms=10", load, 1, one_worker)
    for result in (light, heavy):
        assert 10.0 <= result["delay_ms"]["p50"] < 10.5  # the sleep itself: ms + ε
    assert light["e2e_ms"]["p50"] < 15.0
    assert heavy["e2e_ms"]["p50"] > 10 * heavy["delay_ms"]["p50"]
    assert heavy["queue_depth"]["max"] > 10 > light["queue_depth"]["max"]


def test_deferral_delay_lateness_and_early_share_come_from_the_server() -> None:
    run = simulate("async-route:ms=10", SMALL, 4, SETTINGS, measure_idle=False, keep_records=True)
    result = run.result
    delays = sorted(d.delay for d in run.server.deferrals.values() if d.delay is not None)
    assert len(delays) == result["ledger"]["transactions"]
    assert result["requested_delay_ms"] == 10.0
    assert result["delay_ms"]["min"] == pytest.approx(delays[0] * 1e3)
    assert result["delay_ms"]["max"] == pytest.approx(delays[-1] * 1e3)
    assert result["delay_ms"]["min"] >= 10.0 and result["early_share"] == 0.0
    assert result["lateness_ms"]["p50"] == pytest.approx(result["delay_ms"]["p50"] - 10.0)
    assert result["counters"]["resumed by async-task-worker"] == len(delays)


def test_cpu_shares_add_up_over_the_load_window() -> None:
    result = SimTarget().run("mqueue-rtimer:timers=4", SMALL, 1, SETTINGS)
    cpu = result["cpu"]
    roles = cpu["by_role"]
    assert set(roles) >= {"sip-worker", "timer", "slow-timer", "rtimer"}
    assert sum(r["busy_share"] for r in roles.values()) == pytest.approx(cpu["busy_share"])
    assert sum(r["wakeups_per_s"] for r in roles.values()) == pytest.approx(cpu["wakeups_per_s"])
    assert 0 < cpu["idle_share"] < cpu["busy_share"] < 1
    assert cpu["per_txn_us"] > 0


def test_idle_case_measures_standing_cpu_and_wakeups_per_role() -> None:
    idle = SimTarget().idle("mqueue-rtimer:timers=4,interval=10ms", 2.0, 1, SETTINGS)
    assert idle["ledger"]["transactions"] == 0 and idle["counters"]["calls planned"] == 0
    roles = idle["cpu"]["by_role"]
    # four rtimers, each waking every interval + ε (≈ 10.1 ms): just under 400/s together
    assert 380 < roles["rtimer"]["wakeups_per_s"] < 400
    assert roles["timer"]["wakeups_per_s"] == pytest.approx(16.0)  # the 1/16 s tick
    assert roles["slow-timer"]["wakeups_per_s"] == 0  # signalled only when a TM timer is due
    assert roles["sip-worker"]["wakeups_per_s"] == 0
    assert idle["cpu"]["idle_share"] == idle["cpu"]["busy_share"] > 0
    assert idle["cpu"]["per_txn_us"] is None and idle["e2e_ms"]["p50"] is None
    control = SimTarget().idle("inline", 2.0, 1, SETTINGS)
    assert control["cpu"]["busy_share"] < idle["cpu"]["busy_share"]


def test_stranded_transactions_end_in_408_from_the_fr_timer() -> None:
    """async_workers=0: nothing ever resumes; each re-INVITE is answered 408 at fr_timer."""
    settings = ServerSettings(cores=2, children=4, fr_timer=1.0)
    load = parse_load("reinvite:rate=5/s,duration=1s,reinvites=2,gap=1ms")
    run = simulate("async-route:ms=10,async_workers=0", load, 1, settings, measure_idle=False)
    ledger = run.result["ledger"]
    assert ledger["transactions"] == 10
    assert ledger["timeout_408"] == 10 and ledger["resumed"] == 0
    assert run.result["counters"]["calls unfinished"] == 0
    assert run.end < load.duration + settings.fr_timer * load.reinvites + 1


def test_a_run_is_cut_off_after_duration_plus_fr_timer_and_open_ones_are_lost() -> None:
    settings = ServerSettings(cores=2, children=4, fr_timer=1.0)
    load = parse_load("reinvite:rate=5/s,duration=1s,reinvites=20,gap=1ms")
    run = simulate("async-route:ms=10,async_workers=0", load, 1, settings, measure_idle=False)
    assert run.end == pytest.approx(load.duration + settings.fr_timer + DRAIN_GRACE)
    ledger = run.result["ledger"]
    assert run.result["counters"]["calls unfinished"] == 5
    assert ledger["lost"] == 5  # the re-INVITE each call had open at the cut
    assert ledger["lost"] + ledger["timeout_408"] == ledger["transactions"]


def test_unknown_strategy_is_one_line_error() -> None:
    with pytest.raises(SpecError, match="unknown strategy"):
        SimTarget().run("no-such-strategy", SMALL, 1, SETTINGS)


def test_links_default_and_can_be_set_per_direction() -> None:
    slow = Links(uas_to_proxy=Link(latency=0.050, jitter=0.0))
    fast = simulate("inline", SMALL, 1, SETTINGS, measure_idle=False).result
    slowed = simulate("inline", SMALL, 1, SETTINGS, links=slow, measure_idle=False).result
    assert slowed["e2e_ms"]["min"] == pytest.approx(fast["e2e_ms"]["min"] + 49.5, abs=0.5)


# ---------------------------------------------------------------------------- the network


def _network_run(seed: int, count: int = 2000, **links: Link):
    """Send `count` datagrams UAC -> proxy at t=0 on virtual time; arrival delays."""
    arrivals: list[float] = []
    holder = []

    async def main() -> None:
        kernel = Kernel()
        network = SimNetwork(kernel, seed, **links)
        network.attach(PROXY, lambda message, source: arrivals.append(kernel.now))
        message = reinvite(1)
        for _ in range(count):
            network.send(message, UAC, PROXY)
        await kernel.run(until=1.0)
        holder.append(network)

    run_on_virtual_time(main)
    return arrivals, holder[0]


def test_network_delay_is_latency_plus_seeded_jitter() -> None:
    arrivals, network = _network_run(1)
    assert len(arrivals) == 2000 and network.lost == 0
    assert 0.0003 <= min(arrivals) < 0.00031 and 0.00069 < max(arrivals) <= 0.0007
    assert sum(arrivals) / len(arrivals) == pytest.approx(0.0005, abs=0.00001)
    again, _ = _network_run(1)
    other, _ = _network_run(2)
    assert again == arrivals and other != arrivals


def test_network_loss_is_per_direction_and_counted() -> None:
    arrivals, network = _network_run(1, uac_to_proxy=Link(latency=0.001, jitter=0.0, loss=0.1))
    stats = network.stats()
    assert stats["uac->proxy sent"] == 2000
    assert stats["uac->proxy lost"] == network.lost == 2000 - len(arrivals)
    assert 150 < network.lost < 250  # ≈ 10 %
    assert set(arrivals) == {0.001}
    _, untouched = _network_run(1, proxy_to_uac=Link(loss=0.5))
    assert untouched.lost == 0


def test_network_hands_an_owning_receiver_a_copy() -> None:
    """The proxy edits what it receives (it pops its Via from responses): the sender's
    object, which its transaction may retransmit, must stay as it was sent."""
    original = reinvite(1)
    before = bytes(original)
    at_proxy: list = []
    at_uas: list = []

    async def main() -> None:
        kernel = Kernel()
        network = SimNetwork(kernel, 1)

        def editing_receiver(message, source) -> None:
            message.remove_first_value("Via")
            at_proxy.append(message)

        network.attach(PROXY, editing_receiver, owns=True)
        network.attach(UAS, lambda message, source: at_uas.append(message))
        network.send(original, UAC, PROXY)
        network.send(original, PROXY, UAS)
        await kernel.run(until=1.0)

    run_on_virtual_time(main)
    assert bytes(original) == before
    assert at_proxy[0] is not original and at_proxy[0].top_via is None
    assert at_uas[0] is original  # a receiver that does not own gets the object itself


def test_queue_depth_counts_the_strategys_own_backlog():
    """One rtimer (≈99 pops/s) under 200 re-INVITEs/s backs up; twelve do not."""
    load = parse_load("reinvite:rate=40/s,duration=3s,reinvites=5,gap=1ms")
    settings = ServerSettings(cores=2)
    starved = NO_IDLE.run("mqueue-rtimer:timers=1", load, 1, settings)
    ample = NO_IDLE.run("mqueue-rtimer:timers=12", load, 1, settings)
    assert starved["queue_depth"]["max"] > 50
    assert ample["queue_depth"]["max"] < 10


def test_the_wakeup_tail_delays_hand_offs_under_traffic_but_not_idle_timers() -> None:
    from core.runtime.costs import CostProfile

    tail = CostProfile(wakeup_tail=2000.0, wakeup_tail_share=1.0)  # every wake-up +2 ms mean
    spec = "async-route:ms=10"
    # idle: the ms timer's wake-ups are those of the profile without a tail
    assert (
        SimTarget(tail).idle(spec, 1.0, 1, SETTINGS)["cpu"]["wakeups_per_s"]
        == SimTarget(CostProfile()).idle(spec, 1.0, 1, SETTINGS)["cpu"]["wakeups_per_s"]
    )
    # loaded: the timer's and the task worker's wake-ups both wait, so resumes come later
    plain = SimTarget(CostProfile()).run(spec, SMALL, 1, SETTINGS)["delay_ms"]["mean"]
    late = SimTarget(tail).run(spec, SMALL, 1, SETTINGS)["delay_ms"]["mean"]
    assert late > plain + 1.0


# Long enough for transactions to be freed (wt_timer 5 s) while calls still start.
LONGER = parse_load("reinvite:rate=5/s,duration=8s,reinvites=3,gap=0ms")


@pytest.mark.parametrize("spec", ["mqueue-rtimer", "async-route:ms=10", "blocking-sleep:ms=10"])
def test_streamed_records_give_the_result_kept_records_give(spec: str) -> None:
    """Records are accounted as their transactions are freed and then dropped; keeping
    them all instead changes no figure (the float sums included)."""
    streamed = simulate(spec, LONGER, 3, SETTINGS, measure_idle=False)
    kept = simulate(spec, LONGER, 3, SETTINGS, measure_idle=False, keep_records=True)
    assert {k: v for k, v in streamed.result.items() if k not in WALL_CLOCK} == {
        k: v for k, v in kept.result.items() if k not in WALL_CLOCK
    }
    assert streamed.result["ledger"]["transactions"] > 0
    assert len(streamed.uac.timings) == 0 < len(kept.uac.timings)
    assert len(streamed.server.deferrals) < len(kept.server.deferrals)


def test_the_speed_yardstick_makes_every_sleep_resume_it_counts() -> None:
    from tests.benchmarks.sim_speed import YARDSTICK_STEPS, yardstick

    assert yardstick(64) == 64 * YARDSTICK_STEPS


def test_the_sipp_driver_draws_pause_lateness_from_the_profiles_quantiles() -> None:
    from core.runtime.costs import CostProfile
    from harness.targets.sim import sipp_pause_late

    # half the mass between 1 and 2 ms, half between 2 and 6 ms: the median is 2 ms
    costs = CostProfile(driver_pause_late=9000.0, driver_pause_late_quantiles=(1000, 2000, 6000))
    draw = sipp_pause_late(costs, seed=3)
    late = sorted(draw() for _ in range(4000))
    assert late[0] >= 0.001 and late[-1] <= 0.006  # the quantiles win over late ± jitter
    assert late[2000] == pytest.approx(0.002, abs=1e-4)
    assert late[1000] == pytest.approx(0.0015, abs=1e-4)  # linear between neighbours
    first, second = sipp_pause_late(costs, seed=3), sipp_pause_late(costs, seed=3)
    assert [first() for _ in range(5)] == [second() for _ in range(5)]  # seeded


def test_the_sipp_driver_ends_each_pause_late_by_the_profiles_draw_and_python_on_time() -> None:
    from core.runtime.costs import CostProfile

    late = CostProfile(driver_pause_late=4000.0, driver_pause_late_jitter=1000.0)  # 3–5 ms
    load = parse_load("reinvite:rate=5/s,duration=2s,reinvites=4,gap=20ms,arrival=constant")

    def answered_to_next_sent_ms(driver: str | None) -> list[float]:
        run = simulate("inline", load, 1, SETTINGS, late, keep_records=True, driver=driver)
        by_call: dict[int, list] = {}
        for timing in run.uac.timings.values():
            by_call.setdefault(timing.call, []).append(timing)
        gaps = []
        for timings in by_call.values():
            timings.sort(key=lambda t: t.cseq)
            gaps += [(b.sent - a.final_at) * 1e3 for a, b in itertools.pairwise(timings)]
        return gaps

    on_time, sipp = answered_to_next_sent_ms(None), answered_to_next_sent_ms("sipp")
    assert len(on_time) == len(sipp) == 10 * 3  # 10 calls, 3 gaps between 4 re-INVITEs
    assert on_time == pytest.approx([20.0] * len(on_time))  # the ACK goes at the 200
    assert all(23.0 <= g <= 25.0 for g in sipp)
    assert max(sipp) - min(sipp) > 1.0  # drawn, not one fixed lateness
    # seeded: the same seed draws the same lateness
    assert sipp == answered_to_next_sent_ms("sipp")


def test_the_sim_takes_driver_sipp_and_names_it_in_the_result() -> None:
    from harness import targets

    target = targets.build("sim", targets.TargetOptions(driver="sipp"))
    assert target.driver == "sipp" and target.facts()["driver"] == "sipp"
    assert targets.build("sim", targets.TargetOptions(driver="python")).facts()["driver"] is None


def test_a_run_keeps_no_record_per_call_and_its_settled_transactions_linger_compactly():
    """What a run holds follows the calls in flight, not its length: no call record, no send
    time, no per-dialog ledger entry once the dialog ended, no value waiting in the
    in-order streams at the end, and an accepted transaction lingers without timer state."""
    load = parse_load("reinvite:rate=20/s,duration=3s,reinvites=3,gap=1ms")
    run = simulate("inline", load, 1, SETTINGS, measure_idle=False)
    uac, uas = run.uac, run.uas
    assert run.calls_planned == len(schedule(load, 1)) == uac.calls_started > 0
    assert uac.calls == [] and len(uac.sent) == 0 and uac.timings == {}
    assert uac.sent_in_window == run.result["ledger"]["transactions"]
    assert run.ledger._highest_cseq == {}  # every dialog ended with its BYE
    assert uac._e2e.held == 0 and run.tally is not None and run.tally._delays.held == 0
    txns = [*uac._clients.values(), *uas._servers.values()]
    accepted = [t for t in txns if t.state == "accepted"]
    assert accepted and all(t._timers is None and t.request is None for t in accepted)


def _left_to_the_collector(run: Callable[[], object]) -> int:
    """Objects a collection finds unreachable after `run()`, the collector off meanwhile."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        run()
        return gc.collect()
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize("spec", ["inline", "mqueue-rtimer", "async-route", "async-task"])
def test_a_finished_run_is_freed_without_the_cyclic_collector(spec: str) -> None:
    """What a run leaves behind (lingering transactions, processes, timers, the ledger)
    goes by reference counting as the target returns: the collector finds a few dozen
    objects, the same however long the run, instead of traversing every leftover."""
    short = parse_load("reinvite:rate=20/s,duration=2s,reinvites=10,gap=1ms")
    long = parse_load("reinvite:rate=20/s,duration=8s,reinvites=10,gap=1ms")
    NO_IDLE.run(spec, short, 1, SETTINGS)  # first-use garbage (imports, caches) goes first
    left_short = _left_to_the_collector(lambda: NO_IDLE.run(spec, short, 1, SETTINGS))
    left_long = _left_to_the_collector(lambda: NO_IDLE.run(spec, long, 1, SETTINGS))
    # the same run kept whole, and then dropped, leaves its every object to the collector
    whole = _left_to_the_collector(lambda: simulate(spec, long, 1, SETTINGS, measure_idle=False))
    assert whole > 20_000
    assert left_short < 500
    assert left_long <= left_short + 50


def test_the_first_run_of_a_process_is_freed_without_the_cyclic_collector_too() -> None:
    """Nothing a process imports for its first run (trio, the first time) may leave a
    reference cycle through that run's frames, which would hold its whole model."""
    probe = (
        "import gc\n"
        "from harness.load.spec import parse_load\n"
        "from harness.targets.sim import SimTarget\n"
        "gc.collect(); gc.disable()\n"
        "load = parse_load('reinvite:rate=20/s,duration=2s,reinvites=10,gap=1ms')\n"
        "SimTarget(measure_idle=False).run('mqueue-rtimer', load, 1)\n"
        "print(gc.collect())\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 500


@pytest.mark.parametrize(
    "spec", ["inline", "blocking-sleep", "async-route:workers=1,async_workers=1"]
)
def test_the_ledger_holds_only_the_transactions_still_open(spec: str) -> None:
    """A re-INVITE the proxy never deferred (inline, a blocking sleep: its record is
    accounted whole as it is written) is counted once the UAS has it and its final is in,
    and a deferred one when its transaction is freed (wt_timer, 5 s after its final): at
    the end of a run the ledger and the deferral records hold no more than the last
    seconds' re-INVITEs, however long the run."""
    for seconds in (6, 18):
        load = parse_load(f"reinvite:rate=20/s,duration={seconds}s,reinvites=10,gap=1ms")
        run = simulate(spec, load, 1, SETTINGS, measure_idle=False)
        assert run.result["ledger"]["transactions"] > 190 * seconds
        assert run.result["ledger"]["unknown_events"] == 0
        assert len(run.ledger._entries) + len(run.server.deferrals) <= 6 * 200
