"""The ledger gives every opened transaction exactly one outcome, the worst that happened."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.measure.ledger import OUTCOMES, Ledger, LedgerSummary

K1 = ("call-1@uac", 2)
K2 = ("call-1@uac", 3)
K3 = ("call-2@uac", 2)


def clean_transaction(ledger: Ledger, key, dialog="d1") -> None:
    ledger.open(key)
    ledger.resumed(key)
    ledger.reached_uas(key, dialog, key[1])
    ledger.final(key, 200)


def only(summary: LedgerSummary) -> dict[str, int]:
    """The non-zero outcome counts."""
    return {k: v for k, v in summary.outcomes().items() if v}


def test_summary_fields():
    assert LedgerSummary.field_names()[:11] == (
        "transactions",
        "resumed",
        "lost",
        "duplicated",
        "stale",
        "reordered",
        "race_491",
        "timeout_408",
        "error_5xx",
        "retransmissions",
        "other",
    )


def test_clean_run():
    ledger = Ledger()
    clean_transaction(ledger, K1)
    clean_transaction(ledger, K2)
    clean_transaction(ledger, K3, dialog="d2")
    summary = ledger.close()
    assert summary.transactions == 3 and summary.resumed == 3
    assert only(summary) == {"resumed": 3}
    assert summary.clean


def test_empty_ledger_is_clean():
    summary = Ledger().close()
    assert summary.transactions == 0 and summary.clean


@pytest.mark.parametrize(
    "events, outcome",
    [
        ([], "lost"),
        ([("resumed",)], "lost"),
        ([("resumed",), ("final", 200)], "resumed"),
        ([("final", 200)], "resumed"),
        ([("resumed",), ("resumed",), ("final", 200)], "duplicated"),
        ([("stale",), ("final", 200)], "stale"),
        ([("final", 491)], "race_491"),
        ([("final", 408)], "timeout_408"),
        ([("final", 500)], "error_5xx"),
        ([("final", 503)], "error_5xx"),
        ([("final", 486)], "other"),
        ([("final", 603)], "other"),
        ([("final", 302)], "other"),
    ],
)
def test_single_outcomes(events, outcome):
    ledger = Ledger()
    ledger.open(K1)
    for event, *args in events:
        getattr(ledger, event)(K1, *args)
    assert ledger.outcome(K1) == outcome
    assert only(ledger.close()) == {outcome: 1}


# Each pair: (events giving the higher-precedence outcome, events giving the lower one).
CAUSES = {
    "duplicated": [("resumed",), ("resumed",)],
    "stale": [("stale",)],
    "reordered": [("reached_uas", "d", 1)],  # after CSeq 5 was seen on dialog d
    "race_491": [("final", 491)],
    "timeout_408": [("final", 408)],
    "error_5xx": [("final", 500)],
    "other": [("final", 486)],
    "lost": [],
    "resumed": [("final", 200)],
}


@pytest.mark.parametrize(
    "higher, lower",
    [
        (OUTCOMES[i], OUTCOMES[j])
        for i in range(len(OUTCOMES))
        for j in range(i + 1, len(OUTCOMES))
        if (OUTCOMES[i], OUTCOMES[j]) != ("lost", "resumed")  # exclusive: final or none
    ],
)
def test_precedence(higher, lower):
    """Cause both outcomes on one transaction: the higher one wins. Final statuses are
    exclusive (the first one counts), so only the higher one's final is sent."""
    ledger = Ledger()
    ledger.open(("other-call", 5))
    ledger.reached_uas(("other-call", 5), "d", 5)
    ledger.open(K1)
    finals = [e for e in CAUSES[higher] + CAUSES[lower] if e[0] == "final"]
    events = [e for e in CAUSES[higher] + CAUSES[lower] if e[0] != "final"] + finals[:1]
    for event, *args in events:
        getattr(ledger, event)(K1, *args)
    assert ledger.outcome(K1) == higher


def test_outcomes_order_matches_the_documented_precedence():
    assert OUTCOMES == (
        "duplicated",
        "stale",
        "reordered",
        "race_491",
        "timeout_408",
        "error_5xx",
        "other",
        "lost",
        "resumed",
    )


def test_first_final_is_the_outcome_later_ones_are_retransmissions():
    ledger = Ledger()
    ledger.open(K1)
    ledger.final(K1, 491)
    ledger.final(K1, 200)
    ledger.final(K1, 491)
    assert ledger.outcome(K1) == "race_491"
    assert ledger.close().transactions == 1


def test_configured_race_code():
    ledger = Ledger(race_code=500)
    ledger.open(K1)
    ledger.final(K1, 500)
    ledger.open(K2)
    ledger.final(K2, 491)
    assert only(ledger.close()) == {"race_491": 1, "other": 1}


def test_reordering_is_per_dialog_and_equal_cseq_is_not_reordered():
    ledger = Ledger()
    for key in (K1, K2, K3):
        ledger.open(key)
        ledger.final(key, 200)
    ledger.reached_uas(K2, "d1", 3)
    ledger.reached_uas(K3, "d2", 2)  # other dialog: its own order
    ledger.reached_uas(K1, "d1", 2)  # CSeq 2 after 3 on d1: reordered
    ledger.reached_uas(K2, "d1", 3)  # the same CSeq again is not out of order
    assert ledger.outcome(K1) == "reordered"
    assert ledger.outcome(K2) == "resumed"
    assert ledger.outcome(K3) == "resumed"


def test_retransmissions_are_counted_but_are_not_outcomes():
    ledger = Ledger()
    clean_transaction(ledger, K1)
    ledger.retransmission(K1)
    ledger.retransmission(K1)
    summary = ledger.close()
    assert summary.retransmissions == 2
    assert only(summary) == {"resumed": 1}
    assert summary.clean


def test_unknown_keys_are_counted_never_crash():
    ledger = Ledger()
    clean_transaction(ledger, K1)
    ledger.final(K3, 200)
    ledger.resumed(K3)
    ledger.stale(K3)
    ledger.reached_uas(K3, "d", 2)
    ledger.retransmission(K3)
    summary = ledger.close()
    assert summary.unknown_events == 5
    assert summary.transactions == 1
    assert not summary.clean


def test_opening_twice_is_reported():
    ledger = Ledger()
    clean_transaction(ledger, K1)
    ledger.open(K1)
    summary = ledger.close()
    assert summary.duplicate_open == 1 and summary.transactions == 1
    assert not summary.clean


def test_a_bad_status_is_a_caller_error():
    ledger = Ledger()
    ledger.open(K1)
    with pytest.raises(ValueError):
        ledger.final(K1, 180)


def test_close_reflects_later_events():
    ledger = Ledger()
    ledger.open(K1)
    assert only(ledger.close()) == {"lost": 1}
    ledger.final(K1, 200)
    assert only(ledger.close()) == {"resumed": 1}


# --- properties --------------------------------------------------------------------------

KEYS = [(f"call-{c}", s) for c in range(3) for s in (2, 3)]
STATUSES = [200, 200, 408, 491, 500, 486]

event = st.one_of(
    st.tuples(st.just("final"), st.integers(0, 7), st.sampled_from(STATUSES)),
    st.tuples(st.just("resumed"), st.integers(0, 7)),
    st.tuples(st.just("stale"), st.integers(0, 7)),
    st.tuples(st.just("retransmission"), st.integers(0, 7)),
    st.tuples(st.just("reached_uas"), st.integers(0, 7), st.integers(1, 5)),
    st.tuples(st.just("open"), st.integers(0, 7)),
)


def key_of(i: int):
    return KEYS[i] if i < len(KEYS) else ("never-opened", i)


def apply(ledger: Ledger, events) -> None:
    for name, i, *args in events:
        key = key_of(i)
        if name == "reached_uas":
            ledger.reached_uas(key, key[0], args[0])
        else:
            getattr(ledger, name)(key, *args)


@given(st.lists(event, max_size=60))
def test_every_transaction_has_exactly_one_outcome(events):
    ledger = Ledger()
    apply(ledger, events)
    summary = ledger.close()
    outcomes = summary.outcomes()
    assert sum(outcomes.values()) == summary.transactions
    assert all(0 <= n <= summary.transactions for n in outcomes.values())
    assert summary.transactions == len({i for name, i, *_ in events if name == "open"})
    accounted = summary.unknown_events == 0 and summary.duplicate_open == 0
    assert summary.clean == (outcomes["resumed"] == summary.transactions and accounted)


@given(st.data())
def test_outcomes_do_not_depend_on_event_order(data):
    """With every key opened first and one final status per key, the order of finals,
    resumes, stale continues and retransmissions does not change the summary."""
    statuses = data.draw(st.lists(st.sampled_from(STATUSES), min_size=6, max_size=6))
    unordered = st.one_of(
        st.tuples(st.just("final"), st.integers(0, 5)),
        st.tuples(st.just("resumed"), st.integers(0, 5)),
        st.tuples(st.just("stale"), st.integers(0, 5)),
        st.tuples(st.just("retransmission"), st.integers(0, 7)),
    )
    events = data.draw(st.lists(unordered, max_size=40))
    events = [(n, i, statuses[i]) if n == "final" else (n, i) for n, i in events]
    shuffled = data.draw(st.permutations(events))
    opens = [("open", i) for i in range(6)]
    first, second = Ledger(), Ledger()
    apply(first, opens + events)
    apply(second, opens + list(shuffled))
    assert first.close() == second.close()


@given(st.permutations(list(range(6))))
def test_one_request_per_dialog_is_never_reordered(order):
    ledger = Ledger()
    for i in order:
        ledger.open(KEYS[i])
        ledger.reached_uas(KEYS[i], f"dialog-{i}", KEYS[i][1])
        ledger.final(KEYS[i], 200)
    assert ledger.close().reordered == 0


@given(st.permutations([2, 3, 4, 5, 6]))
def test_reordered_count_is_the_requests_arriving_below_the_running_maximum(order):
    ledger = Ledger()
    highest, expected = 0, 0
    for cseq in order:
        key = ("call", cseq)
        ledger.open(key)
        ledger.final(key, 200)
        ledger.reached_uas(key, "d", cseq)
        expected += cseq < highest
        highest = max(highest, cseq)
    assert ledger.close().reordered == expected


def test_retired_transactions_count_as_kept_ones_and_a_late_stale_still_counts():
    kept, streamed = Ledger(), Ledger()
    for ledger in (kept, streamed):
        clean_transaction(ledger, K1)
        clean_transaction(ledger, K2)
        ledger.open(K3)
        ledger.final(K3, 408)  # a 408 may be the UAC's own Timer B: never retired
    entry = streamed.retire(K1)
    assert entry is not None and streamed.retire(K2) is not None
    assert streamed.retire(K3) is None and len(streamed) == 3
    kept.stale(K1)
    assert streamed.retired_stale(streamed.retired_stale(entry)) != entry
    assert streamed.close() == kept.close()
    assert only(streamed.close()) == {"resumed": 1, "stale": 1, "timeout_408": 1}


def test_a_stale_continue_after_its_deferral_retired_still_reaches_the_ledger():
    from types import SimpleNamespace

    from core.events import TxnId
    from harness.measure.entry import DeferralTally

    ledger = Ledger()
    tally = DeferralTally(ledger, lambda name: "worker")
    deferrals = []
    for n, key in enumerate((K1, K2, K3)):
        clean_transaction(ledger, key) if key != K3 else ledger.open(key)
        d = SimpleNamespace(txn=TxnId(n, 100 + n), call_id=key[0], cseq=key[1],
                            suspended_at=0.0, resumed_at=0.01, resumed_by="w", resumes=0,
                            stale_continues=0, slot=-1)  # fmt: skip
        tally.opened(d)
        deferrals.append(d)
    for d in deferrals:
        tally.retired(d)  # K1, K2 retired by the ledger; K3 (no final yet) kept by key
    assert len(ledger._entries) == 1
    tally.stale(TxnId(1, 101))
    tally.stale(TxnId(1, 101))  # a second one changes nothing more
    tally.stale(TxnId(2, 102))
    tally.stale(TxnId(9, 9))  # never deferred: ignored
    assert only(ledger.close()) == {"resumed": 1, "stale": 2}
    tally.finish()
    assert len(tally.delay) == 3 and tally.delay.summary()["max"] == 10.0  # ms


@given(st.data())
def test_a_streamed_ledger_settles_unrecorded_transactions_with_the_same_summary(data):
    """Sim protocol: a transaction's request reaches the UAS, then its final comes; one with
    a deferral record is announced (`keep`) before either, and its resumes and stale
    continues come later, its record retired after. The streamed ledger counts the others
    as soon as both are in instead of keeping them, and sums up the same."""
    n = 6
    recorded = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    statuses = data.draw(st.lists(st.sampled_from(STATUSES), min_size=n, max_size=n))
    order = data.draw(st.permutations(range(n)))
    resumes = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    plain, streamed = Ledger(), Ledger(streamed=True)
    for ledger in (plain, streamed):
        for i in order:
            key = ("call", i + 1)
            ledger.open(key)
            if recorded[i]:
                ledger.keep(key)
            ledger.reached_uas(key, "d", i + 1)
            ledger.final(key, statuses[i])
        for i in order:
            if recorded[i]:
                key = ("call", i + 1)
                for _ in range(resumes[i]):
                    ledger.resumed(key)
                ledger.retire(key)
    assert streamed.close() == plain.close()
    settled = sum(not r and s != 408 for r, s in zip(recorded, statuses, strict=True))
    assert len(streamed._entries) <= n - settled
    assert streamed.close().unknown_events == 0
