"""Strategy specs as user input: every mistake is one SpecError line saying what is allowed,
and every strategy's canonical `.spec` parses back to the same strategy."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import strategies
from strategies import SpecError, parse_spec

MINE = ("inline", "blocking-sleep", "mqueue-rtimer", "async-task")


def importable() -> list[str]:
    """Registered strategies whose module imports (others may still be being written)."""
    names = []
    for name in strategies.names():
        try:
            strategies.strategy_class(name)
        except ImportError:
            continue
        names.append(name)
    return names


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("inline", "inline"),
        ("blocking-sleep", "blocking-sleep:ms=10"),
        ("mqueue-rtimer", "mqueue-rtimer:timers=12,interval=10ms,take=one,size=0,addmode=0"),
        ("async-task", "async-task:async_workers=4,nonblock=0,usleep=0"),
        (
            " mqueue-rtimer: interval=500us , min_age=0.01s,take=all",
            "mqueue-rtimer:timers=12,interval=500us,take=all,size=0,addmode=0,min_age=10ms",
        ),
        ("async-task:nonblock=true", "async-task:async_workers=4,nonblock=1,usleep=0"),
        (
            "mqueue-rtimer:min_age=0ms",
            "mqueue-rtimer:timers=12,interval=10ms,take=one,size=0,addmode=0",
        ),
    ],
)
def test_canonical_spec(text, canonical):
    assert parse_spec(text).spec == canonical
    assert parse_spec(canonical).spec == canonical


@pytest.mark.parametrize("name", importable())
def test_every_registered_strategy_round_trips_its_defaults(name):
    strategy = parse_spec(name)
    again = parse_spec(strategy.spec)
    assert type(again) is type(strategy) and again.values == strategy.values
    assert again.spec == strategy.spec
    assert strategy.requested_delay >= 0
    assert "request_route" in strategy.kamailio_config()


@pytest.mark.parametrize("name", MINE)
def test_my_modules_expose_their_class_as_strategy(name):
    module = importlib.import_module(strategies._MODULES[name])
    assert module.STRATEGY.name == name


@given(
    timers=st.integers(1, 256),
    interval_us=st.integers(1, 60_000_000),
    take=st.sampled_from(["one", "all"]),
    size=st.integers(0, 10_000_000),
    addmode=st.integers(0, 2),
    min_age_us=st.none() | st.integers(0, 30_000_000),
)
def test_mqueue_rtimer_specs_round_trip(timers, interval_us, take, size, addmode, min_age_us):
    text = f"mqueue-rtimer:timers={timers},interval={interval_us}us,take={take},size={size}"
    text += f",addmode={addmode}"
    if min_age_us is not None:
        text += f",min_age={min_age_us}us"
    strategy = parse_spec(text)
    assert strategy.values["interval"] == pytest.approx(interval_us * 1e-6)
    again = parse_spec(strategy.spec)
    assert again.spec == strategy.spec
    assert round(again.values["interval"] * 1e6) == interval_us
    assert f"interval={interval_us}u;mode={timers}" in strategy.kamailio_config()
    expected_min_age = None if not min_age_us else min_age_us * 1e-6
    if expected_min_age is None:
        assert again.values["min_age"] is None
        assert strategy.requested_delay == strategy.values["interval"]
    else:
        assert again.values["min_age"] == pytest.approx(expected_min_age)
        assert strategy.requested_delay == strategy.values["min_age"]


@given(workers=st.integers(1, 256), nonblock=st.booleans(), usleep=st.integers(0, 10_000_000))
def test_async_task_specs_round_trip(workers, nonblock, usleep):
    strategy = parse_spec(
        f"async-task:async_workers={workers},nonblock={int(nonblock)},usleep={usleep}"
    )
    assert parse_spec(strategy.spec).values == strategy.values
    assert strategy.values == {"async_workers": workers, "nonblock": nonblock, "usleep": usleep}


@given(ms=st.integers(0, 60_000))
def test_blocking_sleep_specs_round_trip(ms):
    strategy = parse_spec(f"blocking-sleep:ms={ms}")
    assert parse_spec(strategy.spec).values == {"ms": ms}
    assert strategy.requested_delay == ms / 1000
    assert f"usleep({ms * 1000});" in strategy.kamailio_config()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("nosuch", ["unknown strategy 'nosuch'", "inline", "mqueue-rtimer", "async-task"]),
        ("", ["empty strategy spec"]),
        ("inline:ms=3", ["inline: unknown parameter ms", "allowed: none"]),
        ("blocking-sleep:sec=1", ["unknown parameter sec", "allowed: ms"]),
        (
            "mqueue-rtimer:timer=3",
            ["unknown parameter timer", "timers, interval, take, size, addmode, min_age"],
        ),
        ("async-task:workers=2", ["unknown parameter workers", "async_workers, nonblock, usleep"]),
        ("blocking-sleep:ms=ten", ["ms='ten'", "expected an integer", "range 0..60000"]),
        ("blocking-sleep:ms=-1", ["ms=-1 is below", "range 0..60000"]),
        ("blocking-sleep:ms=10ms", ["expected an integer"]),
        ("mqueue-rtimer:interval=10", ["interval", "not a duration", "us, ms, s"]),
        ("mqueue-rtimer:interval=10 minutes", ["not a duration"]),
        ("mqueue-rtimer:interval=0ms", ["interval=0us is below", "range 1us..60s"]),
        ("mqueue-rtimer:interval=61s", ["interval=61s is above"]),
        ("mqueue-rtimer:interval=10.5us", ["not a whole number of µs", "interval=<µs>u"]),
        ("mqueue-rtimer:take=some", ["take='some'", "one, all"]),
        ("mqueue-rtimer:addmode=3", ["addmode=3 is above", "range 0..2"]),
        ("mqueue-rtimer:timers=0", ["timers=0 is below", "range 1..256"]),
        ("mqueue-rtimer:size=-5", ["size=-5 is below"]),
        ("mqueue-rtimer:min_age=31s", ["min_age=31s is above"]),
        ("mqueue-rtimer:min_age=fast", ["min_age", "not a duration"]),
        ("async-task:async_workers=0", ["refuses to start", "async_workers>=1"]),
        ("async-task:nonblock=2", ["nonblock='2'", "expected 0 or 1"]),
        ("async-task:usleep=-1", ["usleep=-1 is below"]),
        ("mqueue-rtimer:timers", ["'timers' is not key=value"]),
        ("mqueue-rtimer:timers=2,timers=3", ["timers given twice"]),
    ],
)
def test_bad_specs_get_one_line_saying_what_is_allowed(text, says):
    message = error_of(text)
    for fragment in says:
        assert fragment in message, (fragment, message)


def test_constructing_with_unknown_keywords_is_a_spec_error_too():
    cls = strategies.strategy_class("mqueue-rtimer")
    with pytest.raises(SpecError, match="unknown parameter drain"):
        cls(drain=True)
    with pytest.raises(SpecError, match="timers=0 is below"):
        cls(timers=0)
