"""Load specs parse strictly and round-trip; schedules are seeded, sorted, at the offered rate."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.load.spec import (
    ARRIVALS,
    CallPlan,
    LoadError,
    LoadSpec,
    call_plans,
    format_duration,
    format_rate,
    parse_load,
    schedule,
)


def starts(spec: LoadSpec, seed: int = 1) -> list[float]:
    return [plan.start for plan in schedule(spec, seed)]


# --- parsing -----------------------------------------------------------------------------


def test_defaults():
    spec = parse_load("reinvite")
    assert (spec.rate, spec.duration, spec.reinvites, spec.gap) == (20.0, 10.0, 10, 0.001)
    assert (spec.arrival, spec.race_code) == ("poisson", 491)
    assert spec.reinvite_rate == 200.0
    assert spec.call_rate == 20.0


def test_example_from_the_issue():
    spec = parse_load("reinvite:rate=20/s,duration=60s,reinvites=10,gap=1ms,arrival=poisson")
    assert spec == LoadSpec(rate=20.0, duration=60.0, reinvites=10, gap=0.001, arrival="poisson")
    assert spec.spec == (
        "reinvite:rate=20/s,duration=60s,reinvites=10,gap=1ms,arrival=poisson,race_code=491"
    )


def test_scenario_may_be_left_out():
    assert parse_load("rate=50/s,arrival=constant") == parse_load(
        "reinvite:rate=50/s,arrival=constant"
    )


@pytest.mark.parametrize(
    "text, value",
    [("duration=250ms", 0.25), ("duration=1.5s", 1.5), ("duration=300us", 0.0003)],
)
def test_duration_units(text, value):
    assert parse_load(f"reinvite:{text}").duration == pytest.approx(value, abs=0)


def test_arrival_defaults_are_filled_and_shown():
    assert parse_load("reinvite:arrival=burst").burst == 10
    assert parse_load("reinvite:arrival=ramp").start_rate == 0.0
    assert parse_load("reinvite:arrival=step").steps == 5
    assert "steps=5" in parse_load("reinvite:arrival=step").spec


@pytest.mark.parametrize(
    "text, names",
    [
        ("", "empty"),
        ("reinvite:rate=20", "rate"),
        ("reinvite:rate=fast/s", "rate"),
        ("reinvite:rate=-1/s", "rate"),
        ("reinvite:duration=10", "duration"),
        ("reinvite:duration=0s", "duration"),
        ("reinvite:gap=1", "gap"),
        ("reinvite:reinvites=0", "reinvites"),
        ("reinvite:reinvites=ten", "reinvites"),
        ("reinvite:race_code=200", "race_code"),
        ("reinvite:arrival=zipf", "arrival"),
        ("reinvite:burst=4", "burst"),
        ("reinvite:arrival=constant,steps=3", "steps"),
        ("reinvite:start_rate=1/s", "start_rate"),
        ("reinvite:colour=blue", "colour"),
        ("reinvite:rate=1/s,rate=2/s", "rate"),
        ("reinvite:rate", "rate"),
        ("register:rate=1/s", "register"),
        ("reinvite:rate=1000000/s,duration=86400s", "calls"),
    ],
)
def test_bad_specs_are_one_line_naming_the_problem(text, names):
    with pytest.raises(LoadError) as info:
        parse_load(text)
    message = str(info.value)
    assert names in message
    assert "\n" not in message


def test_error_says_what_is_allowed():
    with pytest.raises(LoadError, match="constant, poisson, burst, ramp, step"):
        parse_load("reinvite:arrival=zipf")
    with pytest.raises(LoadError, match=r"us, ms, s"):
        parse_load("reinvite:gap=5")


def test_formatting_round_trips():
    assert format_rate(0.1) == "0.1/s"
    assert format_rate(20.0) == "20/s"
    assert format_duration(0.0015) == "1500us"
    assert format_duration(60.0) == "60s"
    assert format_duration(0.0) == "0us"


specs = st.builds(
    lambda rate, dur_us, reinvites, gap_us, arrival, race, extra: _spec_text(
        rate, dur_us, reinvites, gap_us, arrival, race, extra
    ),
    rate=st.floats(min_value=0.01, max_value=500, allow_nan=False).map(lambda r: round(r, 3)),
    dur_us=st.integers(min_value=1_000, max_value=120_000_000),
    reinvites=st.integers(min_value=1, max_value=100),
    gap_us=st.integers(min_value=0, max_value=5_000_000),
    arrival=st.sampled_from(ARRIVALS),
    race=st.integers(min_value=400, max_value=699),
    extra=st.integers(min_value=1, max_value=50),
)


def _spec_text(rate, dur_us, reinvites, gap_us, arrival, race, extra):
    parts = [
        f"rate={rate}/s",
        f"duration={dur_us}us",
        f"reinvites={reinvites}",
        f"gap={gap_us}us",
        f"arrival={arrival}",
        f"race_code={race}",
    ]
    if arrival == "burst":
        parts.append(f"burst={extra}")
    if arrival == "ramp":
        parts.append(f"start_rate={extra / 2}/s")
    if arrival == "step":
        parts.append(f"steps={extra}")
    return "reinvite:" + ",".join(reversed(parts))


@given(specs)
def test_canonical_spec_round_trips(text):
    spec = parse_load(text)
    again = parse_load(spec.spec)
    assert again == spec
    assert again.spec == spec.spec


# --- schedules ---------------------------------------------------------------------------


def test_same_seed_same_schedule_different_seed_different():
    spec = parse_load("reinvite:rate=50/s,duration=10s,arrival=poisson")
    assert schedule(spec, 7) == schedule(spec, 7)
    assert schedule(spec, 7) != schedule(spec, 8)


def test_schedule_does_not_use_or_disturb_global_random():
    spec = parse_load("reinvite:rate=50/s,duration=2s")
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    first = schedule(spec, 5)
    assert random.random() == expected_next
    random.seed(999)
    assert schedule(spec, 5) == first


@pytest.mark.parametrize("arrival", ["poisson", "constant", "burst", "ramp", "step"])
def test_call_plans_draw_the_schedule_one_call_at_a_time(arrival):
    """A run holds the next call, not the schedule: the plans are drawn lazily, from the
    same draws in the same order as the list."""
    spec = parse_load(f"reinvite:rate=50/s,duration=10s,arrival={arrival}")
    plans = call_plans(spec, 3)
    assert iter(plans) is plans and not isinstance(plans, list | tuple)
    first = [next(plans) for _ in range(5)]
    assert first + list(plans) == schedule(spec, 3)


def test_plans_are_numbered_in_order():
    plans = schedule(parse_load("reinvite:rate=10/s,duration=1s,arrival=constant"), 0)
    assert plans[:3] == [CallPlan(0, 0.0), CallPlan(1, 0.1), CallPlan(2, 0.2)]
    assert [p.index for p in plans] == list(range(len(plans)))


def test_constant_is_evenly_spaced():
    times = starts(parse_load("reinvite:rate=4/s,duration=2s,arrival=constant"))
    assert times == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_burst_groups_keep_the_mean_rate():
    times = starts(parse_load("reinvite:rate=10/s,duration=2s,arrival=burst,burst=5"))
    assert times == [0.0] * 5 + [0.5] * 5 + [1.0] * 5 + [1.5] * 5
    assert len(times) / 2.0 == 10.0


def test_ramp_rises_linearly():
    times = starts(parse_load("reinvite:rate=100/s,start_rate=0/s,duration=10s,arrival=ramp"))
    assert len(times) == pytest.approx(500, abs=1)  # (0 + 100)/2 × 10 s
    first_half = sum(1 for t in times if t < 5.0)
    assert first_half == pytest.approx(125, abs=1)  # ∫0..5 of 10·t dt
    ramp_down = starts(parse_load("reinvite:rate=10/s,start_rate=100/s,duration=10s,arrival=ramp"))
    assert len(ramp_down) == pytest.approx(550, abs=1)


def test_step_has_equal_steps_up_to_the_rate():
    times = starts(parse_load("reinvite:rate=40/s,duration=4s,arrival=step,steps=4"))
    per_second = [sum(1 for t in times if k <= t < k + 1) for k in range(4)]
    assert per_second == [10, 20, 30, 40]


@settings(max_examples=60, deadline=None)
@given(specs, st.integers(min_value=0, max_value=2**32))
def test_schedules_are_sorted_and_inside_the_run(text, seed):
    spec = parse_load(text)
    times = starts(spec, seed)
    assert times == sorted(times)
    assert all(0.0 <= t < spec.duration for t in times)
    assert starts(spec, seed) == times


@settings(max_examples=80)
@given(
    st.integers(min_value=1, max_value=2000),
    st.integers(min_value=1, max_value=30_000_000),
)
def test_constant_count_is_floor_or_ceil_of_rate_times_duration(rate, duration_us):
    spec = parse_load(f"reinvite:rate={rate}/s,duration={duration_us}us,arrival=constant")
    expected = rate * duration_us / 1e6
    assert math.floor(expected) <= len(schedule(spec, 0)) <= math.ceil(expected)


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.sampled_from([50.0, 200.0, 1000.0]))
def test_poisson_mean_rate_within_statistical_bound(seed, rate):
    duration = 100.0
    spec = parse_load(f"reinvite:rate={rate}/s,duration={duration}s,arrival=poisson")
    n = len(schedule(spec, seed))
    expected = rate * duration
    assert abs(n - expected) < 5 * math.sqrt(expected)  # Poisson count, 5 sigma


def test_poisson_inter_arrivals_look_exponential():
    times = starts(parse_load("reinvite:rate=100/s,duration=200s,arrival=poisson"), 3)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.01, rel=0.03)
    # Exponential: the share of gaps above the mean is e^-1.
    assert sum(1 for g in gaps if g > mean) / len(gaps) == pytest.approx(math.exp(-1), abs=0.02)


def test_the_idle_load_has_no_calls_and_rate_zero_says_how_to_spell_it():
    spec = parse_load("idle:duration=10s")
    assert spec.reinvite_rate == 0 and spec.idle and spec.spec == "idle:duration=10s"
    assert schedule(spec, seed=1) == []
    with pytest.raises(LoadError, match="rate=0/s offers no calls.*idle:duration=10s"):
        parse_load("reinvite:rate=0/s,duration=10s")
