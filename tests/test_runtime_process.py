"""The kernel and process model on virtual time: exact times, CPU contention, queues."""

from __future__ import annotations

import anyio
import pytest

from core.runtime.kernel import Kernel, run_on_virtual_time
from core.runtime.process import Compute, CpuPool, Get, Pass, Process, Put, Queue, Sleep, Stalls


def test_sleep_and_compute_happen_at_exact_virtual_times():
    """Callbacks see exact times in `kernel.now`; trio's clock catches up whenever the
    kernel lets another task run (here: when `run` returns)."""
    log: list[tuple[str, float]] = []

    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 1)
        proc = Process(kernel, cpu, "test", "p")

        def program():
            yield Sleep(0.5)
            log.append(("woke", kernel.now))
            yield Compute(0.25)
            log.append(("computed", kernel.now))

        proc.start(program())
        await kernel.run(until=2.0)
        log.append(("end", anyio.current_time()))
        assert proc.wakeups == 1
        assert proc.busy == 0.25

    run_on_virtual_time(main)
    assert log == [("woke", 0.5), ("computed", 0.75), ("end", 2.0)]


@pytest.mark.parametrize("ahead", [True, False])
def test_a_step_with_nothing_due_runs_ahead_unless_switched_off(ahead: bool, monkeypatch):
    """Sleeps and computes with nothing else due move time inside the running step (no heap
    round trip) when running ahead is on; either way at the same exact times."""
    from core.runtime import kernel as kernel_module

    monkeypatch.setattr(kernel_module, "RUN_AHEAD", ahead)
    log: list[float] = []
    events: list[int] = []

    async def main() -> None:
        kernel = Kernel()
        proc = Process(kernel, CpuPool(kernel, 1), "test", "p")

        def program():
            for _ in range(3):
                yield Sleep(0.5)
                yield Compute(0.25)
                log.append(kernel.now)

        proc.start(program())
        await kernel.run(until=5.0)
        events.append(kernel.events_run)

    run_on_virtual_time(main)
    assert log == [0.75, 1.5, 2.25]
    assert events == ([1] if ahead else [7])


def test_wakeup_latency_delays_sleep_returns_and_hand_offs_but_not_running_work():
    log: list[tuple[str, float]] = []

    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 1)
        cpu.wakeup_latency = lambda: 0.002
        queue = Queue(kernel, "q")
        sleeper, reader = Process(kernel, cpu, "t", "s"), Process(kernel, cpu, "t", "r")

        def sleeps():
            yield Sleep(0.010)
            log.append(("slept", kernel.now))
            yield Compute(0.001)  # running work is not a wake-up: no latency
            log.append(("computed", kernel.now))
            queue.offer("item")  # the blocked reader is woken ...

        def reads():
            item = yield Get(queue)
            log.append((item, kernel.now))  # ... and runs 2 ms later

        sleeper.start(sleeps())
        reader.start(reads())
        await kernel.run(until=1.0)

    run_on_virtual_time(main)
    assert log == [
        ("slept", pytest.approx(0.012)),
        ("computed", pytest.approx(0.013)),
        ("item", pytest.approx(0.015)),
    ]


def test_stalls_cover_their_share_of_time_and_release_everyone_at_their_end():
    import random

    clock = Kernel()  # only its `now` is read, set by hand here
    stalls = Stalls(clock, random.Random(5), mean_s=0.001, share=0.4)
    delays = []
    for k in range(200_000):
        clock.now = k * 1e-4  # a wake-up every 100 µs for 20 s
        delays.append(stalls())
        assert stalls() == delays[-1]  # a second process woken at once: the same release
    delayed = [d for d in delays if d > 0]
    assert len(delayed) / len(delays) == pytest.approx(0.4, abs=0.02)
    assert sum(delayed) / len(delayed) == pytest.approx(0.001, rel=0.05)  # residual: mean


def test_stalls_grow_with_the_cores_busy_share_over_the_last_window():
    """`per_load`: an episode's mean is mean_s + per_load × the busy share of the cores
    over the last window, up to `ceiling`; idle cores leave it at mean_s."""
    import random

    clock = Kernel()  # only its `now` is read, set by hand here
    cpu = CpuPool(clock, 2)
    stalls = Stalls(clock, random.Random(5), mean_s=0.001, share=0.4, per_load=0.004, cpu=cpu,
                    ceiling=0.6)  # fmt: skip

    def mean_delay(start: float, busy_share: float) -> float:
        """Mean stall of the wake-ups after the first 0.5 s (the window catching up)."""
        delayed = []
        for k in range(100_000):  # 10 s, a wake-up every 100 µs
            clock.now = start + k * 1e-4
            cpu.busy_total += busy_share * 2 * 1e-4  # both cores busy that share of the time
            delay = stalls()
            if delay > 0 and k >= 5_000:
                delayed.append(delay)
        return sum(delayed) / len(delayed)

    assert mean_delay(0.0, 0.0) == pytest.approx(0.001, rel=0.05)
    assert mean_delay(10.0, 0.5) == pytest.approx(0.001 + 0.004 * 0.5, rel=0.05)
    assert mean_delay(20.0, 0.0) == pytest.approx(0.001, rel=0.05)  # back to idle
    assert mean_delay(30.0, 0.9) == pytest.approx(0.001 + 0.004 * 0.6, rel=0.05)  # capped


def test_cores_are_shared_fifo_and_waiting_is_accounted():
    finished: dict[str, float] = {}

    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 2)
        procs = [Process(kernel, cpu, "w", f"p{i}") for i in range(3)]

        def job(p: Process):
            yield Compute(1.0)
            finished[p.name] = kernel.now

        for p in procs:
            p.start(job(p))
        await kernel.run(until=5.0)
        assert [p.cpu_wait for p in procs] == [0.0, 0.0, 1.0]
        assert cpu.busy_total == 3.0

    run_on_virtual_time(main)
    assert finished == {"p0": 1.0, "p1": 1.0, "p2": 2.0}


def test_shared_queue_wakes_one_reader_per_item_and_counts_only_blocking_waits():
    got: list[tuple[str, str, float]] = []

    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 4)
        queue = Queue(kernel, "udp")
        readers = [Process(kernel, cpu, "r", f"r{i}") for i in range(2)]

        def reader(p: Process):
            while True:
                item = yield Get(queue)
                got.append((p.name, item, kernel.now))
                yield Compute(0.1)

        for r in readers:
            r.start(reader(r))
        for i, at in enumerate([1.0, 1.0, 1.0]):
            kernel.call_at(at, queue.offer, f"m{i}")
        await kernel.run(until=3.0)
        # r0 and r1 were blocked and woke once each; m2 waited in the queue for r0
        assert [r.wakeups for r in readers] == [1, 1]
        assert queue.max_depth == 1

    run_on_virtual_time(main)
    assert got == [("r0", "m0", 1.0), ("r1", "m1", 1.0), ("r0", "m2", pytest.approx(1.1))]


def test_bounded_queue_blocks_the_writer_until_there_is_room():
    events: list[tuple[str, float]] = []

    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 2)
        queue = Queue(kernel, "tasks", capacity=1)
        writer = Process(kernel, cpu, "w", "writer")
        reader = Process(kernel, cpu, "r", "reader")

        def write():
            for i in range(3):
                yield Put(queue, i)
                events.append((f"put {i}", kernel.now))

        def read():
            yield Sleep(1.0)
            while True:
                item = yield Get(queue)
                events.append((f"got {item}", kernel.now))
                yield Sleep(1.0)

        writer.start(write())
        reader.start(read())
        await kernel.run(until=10.0)

    run_on_virtual_time(main)
    assert events == [
        ("put 0", 0.0),
        ("got 0", 1.0),
        ("put 1", 1.0),
        ("got 1", 2.0),
        ("put 2", 2.0),
        ("got 2", 3.0),
    ]


def test_offer_to_a_full_queue_is_refused_and_counted():
    kernel = Kernel()
    queue = Queue(kernel, "q", capacity=2)
    assert [queue.offer(i) for i in range(4)] == [True, True, False, False]
    assert (queue.accepted, queue.refused, len(queue)) == (2, 2, 2)


def test_other_tasks_on_the_same_mock_clock_keep_exact_times():
    seen: list[tuple[float, int]] = []

    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 1)
        proc = Process(kernel, cpu, "t", "ticker")

        def ticker():
            while True:
                yield Sleep(0.1)

        proc.start(ticker())
        async with anyio.create_task_group() as tg:
            tg.start_soon(kernel.run, 1.0)
            for at in (0.25, 0.55):
                await anyio.sleep_until(at)
                seen.append((anyio.current_time(), proc.wakeups))

    run_on_virtual_time(main)
    assert seen == [(0.25, 2), (0.55, 5)]


def test_work_submitted_from_another_task_runs_at_that_tasks_time():
    stamps: list[float] = []

    async def main() -> None:
        kernel = Kernel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(kernel.run, 2.0)
            await anyio.sleep(0.7)
            kernel.submit(lambda: stamps.append(kernel.now))

    run_on_virtual_time(main)
    assert stamps == [0.7]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_same_kernel_runs_on_the_real_clock(backend: str):
    order: list[str] = []

    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 1)
        a = Process(kernel, cpu, "t", "a")
        b = Process(kernel, cpu, "t", "b")

        def sleeper(name: str, seconds: float):
            yield Sleep(seconds)
            order.append(name)

        a.start(sleeper("a", 0.02))
        b.start(sleeper("b", 0.01))
        start = anyio.current_time()
        await kernel.run(until=start + 0.05)
        assert kernel.now >= start + 0.05

    anyio.run(main, backend=backend)
    assert order == ["b", "a"]


def test_a_program_yielding_something_else_is_a_clear_error():
    kernel = Kernel()
    proc = Process(kernel, CpuPool(kernel, 1), "t", "bad")

    def program():
        yield "not an op"

    proc.start(program())
    with pytest.raises(TypeError, match="bad yielded 'not an op'"):
        kernel.run_due(0.0)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_reader_drains_a_burst_in_arrival_order_on_the_real_clock(backend: str):
    """The driver itself reads a readable socket (live target): a burst sent before the
    kernel looks is delivered whole, in order, stamped with kernel time."""
    import socket

    got: list[tuple[bytes, float]] = []

    async def main() -> None:
        kernel = Kernel(live=True)
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        try:

            def drain() -> None:
                while True:
                    try:
                        data = receiver.recv(2048)
                    except BlockingIOError:
                        return
                    got.append((data, kernel.now))

            kernel.add_reader(receiver, drain)
            for i in range(20):
                sender.sendto(b"datagram %02d" % i, receiver.getsockname())
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(kernel.run)
                    while len(got) < 20:
                        await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()
        finally:
            receiver.close()
            sender.close()

    anyio.run(main, backend=backend)
    assert [data for data, _ in got] == [b"datagram %02d" % i for i in range(20)]
    assert all(0.0 <= at < 5.0 for _, at in got)


def test_steps_cost_less_under_load_down_to_the_ceiling_price_and_idle_price_below_the_floor():
    """`load_exponent`: a step's price falls as (load / floor)^−β with the cores' recent
    busy share, is its idle price below the floor and stops falling at the ceiling."""
    kernel = Kernel()
    cpu = CpuPool(kernel, 2)
    cpu.load_exponent, cpu.load_floor, cpu.load_ceiling = 0.5, 0.01, 0.16
    # idle cores: the first step costs its price (and counts towards the load)
    assert cpu.at_load(100e-6, 0.0) == 100e-6
    # a steady 8 % of both cores for 5 s (20 load windows): 16 ms of work per 100 ms
    price = 1e-3
    t = 0.0
    for _ in range(50):
        t += 0.1
        paid = [cpu.at_load(price, t) for _ in range(16)]
    load = cpu._load
    assert 0.03 < load < 0.16  # what was paid, not what was asked, builds the load
    seen = load - paid[-1] / (0.25 * 2)  # the load the last step found
    assert seen > 0.01
    assert paid[-1] == pytest.approx(price * (seen / 0.01) ** -0.5)
    # far above the ceiling the price is the ceiling's
    cpu._load = 0.9
    assert cpu.at_load(price, t) == pytest.approx(price * (0.16 / 0.01) ** -0.5)
    # after a quiet second the load has decayed below the floor: the idle price again
    assert cpu.at_load(price, t + 2.0) == price


def test_a_process_pays_the_loaded_price_and_accounts_it_as_busy_time():
    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 1)
        cpu.load_exponent, cpu.load_floor, cpu.load_ceiling = 1.0, 0.01, 0.04
        cpu._load = 0.5  # busy lately: above the ceiling, so the price is × 1/4
        proc = Process(kernel, cpu, "test", "p")

        def program():
            yield Compute(0.004)

        proc.start(program())
        await kernel.run(until=1.0)
        assert proc.busy == pytest.approx(0.001)

    run_on_virtual_time(main)


def test_an_empty_timer_pass_pays_the_loaded_price_but_builds_no_load():
    """`Pass`: Kamailio's message work grows no cheaper for its timers' empty passes, so a
    pass is priced like any step and leaves the load where the messages put it."""

    async def main() -> None:
        kernel = Kernel()
        cpu = CpuPool(kernel, 1)
        cpu.load_exponent, cpu.load_floor, cpu.load_ceiling = 1.0, 0.01, 0.04
        cpu._load = 0.5  # busy lately with messages: × 1/4 above the ceiling
        passes = Process(kernel, cpu, "rtimer", "pass")

        def program():
            for _ in range(1000):
                yield Pass(0.004)
                yield Sleep(0.001)

        passes.start(program())
        await kernel.run(until=0.0)
        assert passes.busy == pytest.approx(0.001)  # the first pass: the loaded price
        await kernel.run(until=10.0)
        # 1,000 passes of 4 ms in ten seconds would keep a core busy if they built load;
        # as they do not, the load decays and later passes pay the idle price
        assert cpu._load < 0.01
        assert passes.busy > 2.0  # 2.8 s; counted as load, they would pay ¼ throughout: 1 s

    run_on_virtual_time(main)
