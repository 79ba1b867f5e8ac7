"""The Proxy driven with no I/O: a UAC (ALICE) and a UAS (BOB) joined through the proxy by an
in-memory wire, in virtual time.  One test (or table) per row of the proxy contract."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire import (
    ALICE,
    BOB,
    PROXY,
    Wire,
    ack_for_2xx,
    ack_for_error,
    answer,
    default_routing,
    new_branch,
    request,
)

from core.events import ContinueOutcome, Deliver, Discarded, Send, SuspendOutcome, TxnId
from core.proxy import Proxy, ProxyConfig
from core.sip import SipMessage, SipRequest, SipResponse, make_response, parse_message

OUR_RR = "<sip:10.0.0.1:5060;lr>"
IGNORED = {"via", "v", "max-forwards", "record-route", "route", "content-length", "l"}


def hold(wire: Wire, deliver: Deliver) -> list:
    """Routing logic that keeps new transactions (the test decides what to do); ACKs for
    2xx are still forwarded."""
    if deliver.txn is None:
        return wire.proxy.forward_stateless(deliver.request, wire.now)
    return []


def make(routing=default_routing, **config) -> tuple[Proxy, Wire]:
    proxy = Proxy(ProxyConfig(PROXY, **config))
    return proxy, Wire(proxy, routing)


def last_txn(wire: Wire) -> TxnId:
    txn = wire.delivered[-1].txn
    assert txn is not None
    return txn


def others(message: SipMessage) -> list[tuple[str, str]]:
    return [(n, v) for n, v in message.headers if n.lower() not in IGNORED]


def assert_relayed_request(
    sent: SipRequest,
    got: SipMessage,
    *,
    record_route: bool,
    popped: int = 0,
) -> None:
    """What BOB got is what ALICE sent, but for our Via, Max-Forwards, Record-Route and the
    Route entries naming us."""
    assert isinstance(got, SipRequest)
    assert (got.method, got.uri, got.body) == (sent.method, sent.uri, sent.body)
    assert others(got) == others(sent)
    vias = got.vias
    assert (vias[0].host, vias[0].port) == PROXY
    assert vias[0].branch.startswith("z9hG4bK")
    assert vias[1:] == sent.vias
    assert got.max_forwards == (sent.max_forwards or 70) - 1
    assert got.get_all("Route") == sent.get_all("Route")[popped:]
    expected_rr = [OUR_RR] if record_route else []
    assert got.get_all("Record-Route") == expected_rr + sent.get_all("Record-Route")


def assert_relayed_response(sent: SipResponse, got: SipMessage) -> None:
    """What ALICE got is what BOB sent, minus our Via."""
    assert isinstance(got, SipResponse)
    assert (got.status, got.reason, got.body) == (sent.status, sent.reason, sent.body)
    assert others(got) == others(sent)
    assert got.vias == sent.vias[1:]
    assert got.get_all("Record-Route") == sent.get_all("Record-Route")


def statuses(messages: list[SipMessage]) -> list[int]:
    return [m.status for m in messages]  # type: ignore[attr-defined]


def invite_call(wire: Wire, **kw) -> tuple[SipRequest, SipRequest]:
    """ALICE sends an INVITE; returns it and what BOB received."""
    invite = request("INVITE", body=b"v=0\r\n", **kw)
    wire.send(invite, ALICE)
    got = wire.take(BOB)
    assert len(got) == 1
    return invite, got[0]  # type: ignore[return-value]


# ------------------------------------------------------------------ the basic call flow


def test_invite_100_180_200_ack_through_the_proxy():
    proxy, wire = make()
    invite = request("INVITE", body=b"v=0\r\n")
    wire.send(invite, ALICE)
    assert [d.txn is not None for d in wire.delivered] == [True]
    assert statuses(wire.take(ALICE)) == [100]  # auto_inv_100 on t_relay
    at_bob = wire.take_one(BOB)
    assert_relayed_request(invite, at_bob, record_route=True)

    ringing = answer(at_bob, 180)
    wire.send(ringing, BOB)
    assert_relayed_response(ringing, wire.take_one(ALICE))

    ok = answer(at_bob, 200, body=b"v=0\r\n")
    wire.send(ok, BOB)
    at_alice = wire.take_one(ALICE)
    assert_relayed_response(ok, at_alice)
    assert at_alice.get_all("Record-Route") == [OUR_RR]

    ack = ack_for_2xx(invite, at_alice)
    assert ack.get_all("Route") == [OUR_RR]
    wire.send(ack, ALICE)
    assert wire.delivered[-1].txn is None  # ACK for 2xx: no transaction, forwarded statelessly
    ack_at_bob = wire.take_one(BOB)
    assert_relayed_request(ack, ack_at_bob, record_route=False, popped=1)
    assert ack_at_bob.uri == "sip:bob@10.0.0.3:5062"
    assert wire.discarded == []


@pytest.mark.parametrize("method", ["INVITE", "BYE", "UPDATE", "INFO"])
def test_in_dialog_requests_are_loose_routed_without_record_route(method):
    proxy, wire = make()
    req = request(method, to_tag="bob-tag", cseq=2, routes=(OUR_RR,))
    wire.send(req, ALICE)
    got = wire.take_one(BOB)
    assert_relayed_request(req, got, record_route=False, popped=1)
    ok = answer(got, 200)
    wire.send(ok, BOB)
    at_alice = wire.take(ALICE)
    if method == "INVITE":
        assert statuses(at_alice) == [100, 200]
        assert_relayed_response(ok, at_alice[1])
        ack = ack_for_2xx(req, at_alice[1])
        wire.send(ack, ALICE)
        assert_relayed_request(ack, wire.take_one(BOB), record_route=False, popped=1)
    else:
        assert statuses(at_alice) == [200]
        assert_relayed_response(ok, at_alice[0])


@pytest.mark.parametrize(
    ("routes", "uri", "destination", "popped"),
    [
        ((), "sip:bob@10.0.0.3:5062", ("10.0.0.3", 5062), 0),
        ((), "sip:bob@10.0.0.3", ("10.0.0.3", 5060), 0),
        ((), "sips:bob@10.0.0.3", ("10.0.0.3", 5061), 0),
        ((), "sip:bob@[2001:db8::1]:5070", ("2001:db8::1", 5070), 0),
        ((), "sip:bob@bob.example.com", ("bob.example.com", 5060), 0),
        ((OUR_RR,), "sip:bob@10.0.0.3:5062", ("10.0.0.3", 5062), 1),
        (("<sip:10.0.0.1;lr>",), "sip:bob@10.0.0.3:5062", ("10.0.0.3", 5062), 1),
        ((f"{OUR_RR}, <sip:10.0.0.9:5070;lr>",), "sip:bob@10.0.0.3", ("10.0.0.9", 5070), 1),
        ((OUR_RR, "<sip:10.0.0.9:5070;lr>"), "sip:bob@10.0.0.3", ("10.0.0.9", 5070), 1),
        (("<sip:10.0.0.9:5070;lr>",), "sip:bob@10.0.0.3", ("10.0.0.9", 5070), 0),
        ((OUR_RR, OUR_RR), "sip:bob@10.0.0.3:5062", ("10.0.0.3", 5062), 2),
    ],
)
def test_next_hop_by_loose_routing(routes, uri, destination, popped):
    proxy, wire = make()
    req = request("OPTIONS", uri, routes=routes)
    wire.send(req, ALICE)
    sent = [(dest, m) for _, dest, m in wire.sent if isinstance(m, SipRequest)]
    assert len(sent) == 1
    dest, got = sent[0]
    assert dest == destination
    assert_relayed_request(req, got, record_route=False, popped=popped)


def test_unroutable_request_uri_is_answered_not_relayed():
    proxy, wire = make()
    wire.send(request("OPTIONS", "tel:+15551234"), ALICE)
    assert statuses(wire.take(ALICE)) == [400]
    assert wire.take(BOB) == []


def test_max_forwards_zero_is_answered_483_and_never_delivered():
    proxy, wire = make()
    req = request("INVITE", max_forwards=0)
    wire.send(req, ALICE)
    assert wire.delivered == []
    answered = wire.take_one(ALICE)
    assert answered.status == 483 and answered.to_tag  # type: ignore[attr-defined]
    wire.send(req, ALICE)  # retransmission: the 483 again, from the transaction
    assert statuses(wire.take(ALICE)) == [483]
    wire.send(ack_for_error(req, answered), ALICE)  # type: ignore[arg-type]
    assert wire.take(BOB) == [] and wire.delivered == []
    assert proxy.stats()["too_many_hops"] == 1


def test_max_forwards_one_is_relayed_with_zero():
    proxy, wire = make()
    req = request("OPTIONS", max_forwards=1)
    wire.send(req, ALICE)
    assert wire.take_one(BOB).max_forwards == 0


def test_max_forwards_absent_rfc2543_request_is_relayed_with_70():
    proxy, wire = make()
    req = request("OPTIONS", max_forwards=None, branch="old-style-1")
    wire.send(req, ALICE)
    got = wire.take_one(BOB)
    assert got.max_forwards == 70
    wire.send(req, ALICE)  # RFC 2543 matching: absorbed as a retransmission
    assert len(wire.delivered) == 1


def test_ack_for_2xx_with_max_forwards_zero_is_discarded():
    proxy, wire = make()
    wire.send(request("ACK", to_tag="bob-tag", max_forwards=0), ALICE)
    assert wire.take(BOB) == []
    assert wire.discarded and "too many hops" in wire.discarded[0].reason


# ------------------------------------------------------------------ Via push/pop, addresses


def test_via_pushed_with_deterministic_branch_and_popped_on_the_way_back():
    proxy, wire = make()
    invite, at_bob = invite_call(wire)
    ours = at_bob.top_via
    txn = last_txn(wire)
    assert f"{txn.index:x}.{txn.label:x}" in ours.branch
    ok = answer(at_bob, 200)
    wire.send(ok, BOB)
    assert wire.take(ALICE)[-1].vias == invite.vias

    # same seed, same input -> same branch; another seed -> another one
    _, wire2 = make()
    _, at_bob2 = invite_call(wire2)
    assert at_bob2.top_via.branch == ours.branch
    _, wire3 = make(label_seed=7)
    _, at_bob3 = invite_call(wire3)
    assert at_bob3.top_via.branch != ours.branch


NAT = "192.168.1.5:5070"
SRC = "10.0.0.2"


@pytest.mark.parametrize(
    ("sent_by", "params", "source", "upstream", "received", "rport"),
    [
        # sent-by matches the source: no received, port from sent-by
        ("10.0.0.2:5070", "", (SRC, 5070), (SRC, 5070), None, None),
        # behind a NAT without rport: received added, port from sent-by
        (NAT, "", (SRC, 40000), (SRC, 5070), SRC, None),
        # rport asked: answer to the source port
        (NAT, ";rport", (SRC, 40000), (SRC, 40000), SRC, "40000"),
        ("10.0.0.2", ";rport", (SRC, 40001), (SRC, 40001), None, "40001"),
        # no port in sent-by, no rport: 5060
        ("alice.example.com", "", (SRC, 40002), (SRC, 5060), SRC, None),
    ],
)
def test_responses_go_to_received_and_rport(sent_by, params, source, upstream, received, rport):
    proxy, wire = make()
    invite = request("INVITE", via=f"SIP/2.0/UDP {sent_by}{params};branch={new_branch()}")
    wire.send(invite, source)
    trying = wire.take_one(upstream)
    assert trying.status == 100  # type: ignore[attr-defined]
    assert trying.top_via.received == received and trying.top_via.rport == rport
    at_bob = wire.take_one(BOB)
    fixed = at_bob.vias[1]
    assert fixed.received == received and fixed.rport == rport
    assert fixed.branch == invite.top_via.branch
    wire.send(answer(at_bob, 200), BOB)
    assert statuses(wire.take(upstream)) == [200]


# ------------------------------------------------------------------ retransmissions


def test_invite_retransmissions_absorbed_with_the_last_response():
    proxy, wire = make()
    invite, at_bob = invite_call(wire)
    assert statuses(wire.take(ALICE)) == [100]
    wire.send(invite, ALICE)
    assert statuses(wire.take(ALICE)) == [100]
    wire.send(answer(at_bob, 180), BOB)
    wire.take(ALICE)
    wire.send(invite, ALICE)
    assert statuses(wire.take(ALICE)) == [180]
    wire.send(answer(at_bob, 486), BOB)
    assert statuses(wire.take(ALICE)) == [486]
    wire.send(invite, ALICE)
    assert statuses(wire.take(ALICE)) == [486]
    assert len(wire.delivered) == 1 and wire.take(BOB)[0].method == "ACK"
    assert proxy.stats()["retransmissions_absorbed"] == 3


def test_invite_retransmission_before_any_response_is_absorbed_silently():
    proxy, wire = make(routing=hold)
    invite = request("INVITE")
    wire.send(invite, ALICE)
    wire.send(invite, ALICE)
    assert wire.take(ALICE) == [] and len(wire.delivered) == 1


def test_non_invite_retransmissions_absorbed_then_final_resent():
    proxy, wire = make()
    options = request("OPTIONS")
    wire.send(options, ALICE)
    at_bob = wire.take_one(BOB)
    wire.send(options, ALICE)
    assert wire.take(ALICE) == [] and wire.take(BOB) == []
    wire.send(answer(at_bob, 200), BOB)
    assert statuses(wire.take(ALICE)) == [200]
    wire.send(options, ALICE)
    assert statuses(wire.take(ALICE)) == [200]
    assert len(wire.delivered) == 1


def test_2xx_retransmissions_are_forwarded_each_time():
    proxy, wire = make()
    invite, at_bob = invite_call(wire)
    ok = answer(at_bob, 200)
    for _ in range(3):
        wire.send(ok, BOB)
    assert statuses(wire.take(ALICE)) == [100, 200, 200, 200]


def test_2xx_retransmitted_after_the_transaction_is_freed_goes_on_statelessly():
    proxy, wire = make(wt_timer=1.0)
    invite, at_bob = invite_call(wire)
    ok = answer(at_bob, 200)
    wire.send(ok, BOB)
    wire.run_until(10.0)
    assert proxy.stats()["transactions_live"] == 0
    wire.take(ALICE)
    wire.send(ok, BOB)
    assert statuses(wire.take(ALICE)) == [200]


def test_messages_handed_in_are_never_edited():
    proxy = Proxy(ProxyConfig(PROXY))
    invite = request("INVITE", routes=(OUR_RR,), to_tag="bob-tag")
    before = bytes(invite)
    deliver = proxy.receive_message(invite, ALICE, 0.0)[0]
    assert isinstance(deliver, Deliver) and deliver.txn is not None
    relayed = [a.message for a in proxy.relay(deliver.txn, 0.0) if a.destination == BOB]
    ok = answer(relayed[0], 200)
    ok_before = bytes(ok)
    first = proxy.receive_message(ok, BOB, 0.0)
    again = proxy.receive_message(ok, BOB, 0.1)  # the same object retransmitted
    assert bytes(invite) == before and bytes(ok) == ok_before
    assert [type(a) for a in first + again] == [Send, Send]
    assert bytes(first[0].message) == bytes(again[0].message)


def test_unmatched_responses_are_discarded():
    proxy, wire = make()
    stray = make_response(request("OPTIONS", via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx"), 200)
    wire.send(stray, BOB)
    assert wire.take(ALICE) == []
    assert len(wire.discarded) == 1 and "no matching transaction" in wire.discarded[0].reason


def test_client_transaction_re_acks_retransmitted_error_hop_by_hop():
    proxy, wire = make()
    invite, at_bob = invite_call(wire)
    busy = answer(at_bob, 486)
    wire.send(busy, BOB)
    acks = wire.take(BOB)
    assert [m.method for m in acks] == ["ACK"]  # type: ignore[attr-defined]
    ack = acks[0]
    assert ack.top_via.branch == at_bob.top_via.branch and ack.to_tag == "bob-tag"
    assert ack.uri == at_bob.uri
    wire.send(busy, BOB)  # retransmitted 486: ACKed again, not relayed again
    assert [m.method for m in wire.take(BOB)] == ["ACK"]  # type: ignore[attr-defined]
    assert statuses(wire.take(ALICE)) == [100, 486]


# ------------------------------------------------------------------ timers at exact times


def sent_times(wire: Wire, to: tuple, method: str | None = None, status: int | None = None):
    return [
        t
        for t, dest, m in wire.sent
        if dest == to
        and (method is None or getattr(m, "method", None) == method)
        and (status is None or getattr(m, "status", None) == status)
    ]


def test_timer_a_retransmits_and_fr_timer_answers_408():
    proxy, wire = make(fr_timer=30.0)
    invite_call(wire)
    wire.run_until(60.0)
    assert sent_times(wire, BOB, "INVITE") == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5]
    assert sent_times(wire, ALICE, status=408)[0] == 30.0  # then Timer G until ACK/H


def test_timer_b_answers_408_when_fr_timer_is_longer():
    proxy, wire = make(fr_timer=40.0)
    invite_call(wire)
    wire.run_until(60.0)
    assert sent_times(wire, BOB, "INVITE") == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert sent_times(wire, ALICE, status=408)[0] == 32.0


def test_fr_timer_is_tick_quantised_and_fr_inv_after_a_provisional():
    proxy, wire = make(fr_timer=2.0, fr_inv_timer=5.0)
    wire.now = 0.1
    invite, at_bob = invite_call(wire)
    assert proxy.next_deadline() == 0.6  # Timer A
    wire.run_until(1.0)
    wire.send(answer(at_bob, 180), BOB)  # fr_inv from t=1.0: tick 16 + 80 ticks = 6.0
    wire.take(BOB)
    wire.run_until(5.99)
    assert sent_times(wire, ALICE, status=408) == []
    wire.run_until(10.0)
    assert sent_times(wire, ALICE, status=408)[0] == 6.0
    cancels = [m for m in wire.take(BOB) if m.method == "CANCEL"]  # type: ignore[attr-defined]
    # a provisional was received: the branch is CANCELled (and the CANCEL retransmitted)
    assert cancels and {c.top_via.branch for c in cancels} == {at_bob.top_via.branch}
    assert sent_times(wire, BOB, "CANCEL")[:2] == [6.0, 6.5]


def test_timer_e_and_f_for_a_relayed_non_invite():
    proxy, wire = make(fr_timer=40.0)
    wire.send(request("OPTIONS"), ALICE)
    wire.run_until(60.0)
    assert sent_times(wire, BOB, "OPTIONS") == [
        0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]  # fmt: skip
    assert sent_times(wire, ALICE, status=408) == [32.0]


def test_timer_g_retransmits_final_until_timer_h_then_wait_frees():
    proxy, wire = make(wt_timer=5.0)
    invite, at_bob = invite_call(wire)
    wire.now = 1.0
    wire.send(answer(at_bob, 486), BOB)
    wire.run_until(100.0)
    assert sent_times(wire, ALICE, status=486) == [
        1.0, 1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5,
    ]  # fmt: skip
    assert proxy.stats()["transactions_live"] == 0
    assert proxy.request_of(last_txn(wire)) is None


def test_ack_stops_timer_g_and_the_wait_timer_frees_the_transaction():
    proxy, wire = make(wt_timer=5.0)
    invite, at_bob = invite_call(wire)
    txn = last_txn(wire)
    wire.send(answer(at_bob, 486), BOB)
    busy = wire.take(ALICE)[-1]
    wire.run_until(0.7)
    wire.send(ack_for_error(invite, busy), ALICE)  # type: ignore[arg-type]
    assert proxy.stats()["acks_absorbed"] == 1 and len(wire.delivered) == 1
    assert proxy.next_deadline() == 5.6875  # wait timer: tick of 0.7 (0.6875) + 5.0
    wire.run_until(5.6874)
    assert proxy.request_of(txn) is not None
    wire.run_until(5.6875)
    assert proxy.request_of(txn) is None
    assert sent_times(wire, ALICE, status=486) == [0.0, 0.5]


def test_non_invite_kept_for_wt_timer_then_retransmission_is_new():
    proxy, wire = make(wt_timer=5.0)
    options = request("OPTIONS")
    wire.send(options, ALICE)
    wire.send(answer(wire.take_one(BOB), 200), BOB)
    wire.take(ALICE)
    wire.run_until(4.9)
    wire.send(options, ALICE)
    assert statuses(wire.take(ALICE)) == [200] and len(wire.delivered) == 1
    wire.run_until(5.0)
    wire.send(options, ALICE)
    assert len(wire.delivered) == 2  # freed: the same request is a new transaction


def test_timer_k_absorbs_retransmitted_non_invite_final():
    proxy, wire = make()
    wire.send(request("OPTIONS"), ALICE)
    ok = answer(wire.take_one(BOB), 200)
    wire.send(ok, BOB)
    wire.send(ok, BOB)
    assert statuses(wire.take(ALICE)) == [200]


def test_next_deadline_is_exact_and_expire_fires_only_what_is_due():
    proxy, wire = make()
    assert proxy.next_deadline() is None
    invite_call(wire)
    assert proxy.next_deadline() == 0.5
    assert proxy.expire(0.4999) == []
    actions = proxy.expire(0.5)
    assert [a.message.method for a in actions if isinstance(a, Send)] == ["INVITE"]
    assert proxy.next_deadline() == 1.5


# ------------------------------------------------------------------ suspend / continue


def suspend_all(wire: Wire, deliver: Deliver) -> list:
    if deliver.txn is None:
        return wire.proxy.forward_stateless(deliver.request, wire.now)
    outcome, actions = wire.proxy.suspend(deliver.txn, wire.now)
    assert outcome is SuspendOutcome.SUSPENDED
    return actions


def resume(wire: Wire, txn: TxnId, relay: bool = True) -> ContinueOutcome:
    """What an async strategy does: t_continue, then the continuation route."""
    outcome, actions = wire.proxy.continue_transaction(txn, wire.now)
    wire.dispatch(actions)
    if outcome is ContinueOutcome.RESUMED:
        if relay:
            wire.dispatch(wire.proxy.relay(txn, wire.now))
        wire.dispatch(wire.proxy.end_continuation(txn, wire.now))
    return outcome


def test_suspend_invite_sends_100_at_once_then_continue_relays():
    proxy, wire = make(routing=suspend_all)
    invite = request("INVITE")
    wire.send(invite, ALICE)
    txn = last_txn(wire)
    assert statuses(wire.take(ALICE)) == [100] and wire.take(BOB) == []
    assert [e.kind for e in wire.events] == ["suspended"]
    wire.run_until(0.01)
    assert resume(wire, txn) is ContinueOutcome.RESUMED
    assert [e.kind for e in wire.events] == ["suspended", "resumed"]
    assert wire.events[1].time == 0.01
    at_bob = wire.take_one(BOB)
    assert_relayed_request(invite, at_bob, record_route=True)
    assert wire.take(ALICE) == []  # the 100 was already sent
    wire.send(answer(at_bob, 200), BOB)
    assert statuses(wire.take(ALICE)) == [200]
    wire.run_until(100.0)  # the blind branch's fr timer was stopped: no 408 later
    assert sent_times(wire, ALICE, status=408) == []


def test_suspend_non_invite_sends_nothing():
    proxy, wire = make(routing=suspend_all)
    wire.send(request("OPTIONS"), ALICE)
    assert wire.take(ALICE) == []
    assert [e.kind for e in wire.events] == ["suspended"]


@pytest.mark.parametrize(("method", "resent"), [("INVITE", [100, 100, 100]), ("OPTIONS", [])])
def test_retransmissions_while_suspended_are_absorbed(method, resent):
    proxy, wire = make(routing=suspend_all)
    req = request(method)
    wire.send(req, ALICE)
    wire.take(ALICE)
    for _ in range(3):
        wire.send(req, ALICE)
    assert statuses(wire.take(ALICE)) == resent
    assert [e.kind for e in wire.events] == ["suspended"] + ["absorbed"] * 3
    assert len(wire.delivered) == 1
    assert proxy.stats()["retransmissions_absorbed"] == 3


def test_cancel_while_suspended_487_200_and_continue_is_skipped():
    proxy, wire = make(routing=suspend_all, wt_timer=5.0)
    invite = request("INVITE")
    wire.send(invite, ALICE)
    txn = last_txn(wire)
    wire.take(ALICE)
    cancel = request("CANCEL", branch=invite.top_via.branch)
    wire.send(cancel, ALICE)
    replies = wire.take(ALICE)
    assert [(m.status, m.cseq.method) for m in replies] == [(487, "INVITE"), (200, "CANCEL")]  # type: ignore[attr-defined]
    assert [e.kind for e in wire.events] == ["suspended", "cancelled"]
    assert len(wire.delivered) == 1  # CANCEL handled by the core
    wire.send(cancel, ALICE)  # retransmitted CANCEL: the 200 again
    assert statuses(wire.take(ALICE)) == [200]
    assert resume(wire, txn) is ContinueOutcome.CANCELLED
    assert wire.take(BOB) == []  # continuation skipped
    wire.send(ack_for_error(invite, replies[0]), ALICE)  # type: ignore[arg-type]
    assert resume(wire, txn) is ContinueOutcome.CANCELLED
    wire.run_until(20.0)
    assert resume(wire, txn) is ContinueOutcome.NOT_FOUND
    assert proxy.suspend(txn, wire.now)[0] is SuspendOutcome.NOT_FOUND


def test_cancel_of_a_held_unrelayed_invite_487_200():
    proxy, wire = make(routing=hold)
    invite = request("INVITE")
    wire.send(invite, ALICE)
    txn = last_txn(wire)
    wire.send(request("CANCEL", branch=invite.top_via.branch), ALICE)
    assert statuses(wire.take(ALICE)) == [487, 200]
    assert wire.events == []  # it was not suspended
    assert proxy.relay(txn, wire.now) == []  # t_relay on a cancelled transaction fails
    assert proxy.suspend(txn, wire.now)[0] is SuspendOutcome.ALREADY_CANCELLED


def test_cancel_of_a_relayed_invite_is_forwarded_and_487_relayed():
    proxy, wire = make()
    invite, at_bob = invite_call(wire)
    wire.send(answer(at_bob, 180), BOB)
    wire.take(ALICE)
    wire.send(request("CANCEL", branch=invite.top_via.branch), ALICE)
    assert [(m.status, m.cseq.method) for m in wire.take(ALICE)] == [(200, "CANCEL")]  # type: ignore[attr-defined]
    cancel_at_bob = wire.take_one(BOB)
    assert cancel_at_bob.method == "CANCEL"  # type: ignore[attr-defined]
    assert cancel_at_bob.top_via.branch == at_bob.top_via.branch
    assert cancel_at_bob.get_all("Via") == at_bob.get_all("Via")[:1]
    wire.send(answer(cancel_at_bob, 200), BOB)  # hop-by-hop: not relayed
    assert wire.take(ALICE) == []
    wire.send(answer(at_bob, 487), BOB)
    assert statuses(wire.take(ALICE)) == [487]
    assert [m.method for m in wire.take(BOB)] == ["ACK"]  # type: ignore[attr-defined]


def test_cancel_before_any_provisional_waits_for_one():
    proxy, wire = make()
    invite, at_bob = invite_call(wire)
    wire.send(request("CANCEL", branch=invite.top_via.branch), ALICE)
    assert statuses(wire.take(ALICE)) == [100, 200]
    assert wire.take(BOB) == []
    wire.send(answer(at_bob, 180), BOB)
    assert [m.method for m in wire.take(BOB)] == ["CANCEL"]  # type: ignore[attr-defined]
    assert statuses(wire.take(ALICE)) == [180]  # no final yet: the 180 still goes up


def test_cancel_matching_nothing_is_481():
    proxy, wire = make()
    wire.send(request("CANCEL"), ALICE)
    assert statuses(wire.take(ALICE)) == [481]
    assert wire.delivered == []


def test_continue_twice_is_already_continued():
    proxy, wire = make(routing=suspend_all)
    wire.send(request("INVITE"), ALICE)
    txn = last_txn(wire)
    assert resume(wire, txn) is ContinueOutcome.RESUMED
    assert resume(wire, txn) is ContinueOutcome.ALREADY_CONTINUED
    assert len(wire.take(BOB)) == 1


def test_continue_of_a_never_suspended_transaction_is_already_continued():
    proxy, wire = make(routing=hold)
    wire.send(request("INVITE"), ALICE)
    assert resume(wire, last_txn(wire)) is ContinueOutcome.ALREADY_CONTINUED


@pytest.mark.parametrize(
    ("suspend_at", "fr_timer", "method"),
    [(0.1, 1.5, "INVITE"), (0.1, 1.5, "OPTIONS"), (0.0, 30.0, "INVITE"), (0.37, 0.01, "INVITE")],
)
def test_suspension_deadline_at_exact_tick_formula(suspend_at, fr_timer, method):
    tick = 0.0625
    expected = math.floor(suspend_at / tick) * tick + math.ceil(fr_timer / tick) * tick
    proxy, wire = make(routing=suspend_all, fr_timer=fr_timer)
    wire.now = suspend_at
    wire.send(request(method), ALICE)
    txn = last_txn(wire)
    assert proxy.next_deadline() == expected
    wire.run_until(expected - 1e-6)
    assert sent_times(wire, ALICE, status=408) == []
    wire.run_until(expected)
    assert sent_times(wire, ALICE, status=408) == [expected]
    assert [(e.kind, e.time) for e in wire.events][-1] == ("timed_out", expected)
    assert resume(wire, txn) is ContinueOutcome.TIMED_OUT
    assert wire.take(BOB) == []


def test_suspend_at_0_1_with_fr_1_5_times_out_at_1_5625():
    proxy, wire = make(routing=suspend_all, fr_timer=1.5)
    wire.now = 0.1
    wire.send(request("INVITE"), ALICE)
    txn = last_txn(wire)
    wire.run_until(2.0)
    assert sent_times(wire, ALICE, status=408) == [1.5625]
    assert resume(wire, txn) is ContinueOutcome.TIMED_OUT


def test_continue_just_before_the_deadline_still_runs():
    proxy, wire = make(routing=suspend_all, fr_timer=1.5)
    wire.now = 0.1
    wire.send(request("INVITE"), ALICE)
    txn = last_txn(wire)
    wire.run_until(1.5624)
    assert resume(wire, txn) is ContinueOutcome.RESUMED
    wire.run_until(2.1)
    assert sent_times(wire, ALICE, status=408) == []
    assert sent_times(wire, BOB, "INVITE") == [1.5624, 1.5624 + 0.5]  # relay, Timer A


def test_suspension_deadline_capped_by_max_lifetime_and_counted_for_the_relay():
    proxy, wire = make(routing=suspend_all, fr_timer=30.0, max_inv_lifetime=2.0)
    wire.send(request("INVITE"), ALICE)
    txn = last_txn(wire)
    assert proxy.next_deadline() == 2.0
    wire.run_until(1.5)
    assert resume(wire, txn) is ContinueOutcome.RESUMED
    wire.run_until(10.0)
    # relayed at 1.5: its fr (30 s) is capped at creation + 2.0 as well
    assert sent_times(wire, ALICE, status=408)[0] == 2.0


def test_max_branches_limits_suspends_and_relays():
    proxy, wire = make(routing=hold, max_branches=2)
    wire.send(request("INVITE"), ALICE)
    txn = last_txn(wire)
    assert proxy.suspend(txn, 0.0)[0] is SuspendOutcome.SUSPENDED
    assert proxy.continue_transaction(txn, 0.0)[0] is ContinueOutcome.RESUMED
    assert proxy.suspend(txn, 0.0)[0] is SuspendOutcome.SUSPENDED  # re-suspend inside it
    assert proxy.end_continuation(txn, 0.0) == []  # suspended again: no 500
    assert proxy.continue_transaction(txn, 0.0)[0] is ContinueOutcome.RESUMED
    outcome, actions = proxy.suspend(txn, 0.0)
    assert outcome is SuspendOutcome.TOO_MANY_BRANCHES and actions == []
    assert proxy.relay(txn, 0.0) == []  # t_relay has no branch left either
    wire.dispatch(proxy.end_continuation(txn, 0.0))
    assert statuses(wire.take(ALICE))[-1] == 500


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        ("nothing", [100, 500]),
        ("relay", [100]),
        ("reply", [100, 404]),
    ],
)
def test_end_continuation_kills_with_500_only_if_nothing_was_done(continuation, expected):
    proxy, wire = make(routing=suspend_all)
    wire.send(request("INVITE"), ALICE)
    txn = last_txn(wire)
    outcome, actions = proxy.continue_transaction(txn, 0.0)
    assert outcome is ContinueOutcome.RESUMED
    if continuation == "relay":
        wire.dispatch(proxy.relay(txn, 0.0))
    elif continuation == "reply":
        wire.dispatch(proxy.reply(txn, 404, None, 0.0))
    wire.dispatch(proxy.end_continuation(txn, 0.0))
    answers = wire.take(ALICE)
    assert statuses(answers) == expected
    if continuation == "nothing":
        assert answers[-1].reason.startswith("I'm terribly sorry")  # type: ignore[attr-defined]
        assert proxy.stats()["killed_500"] == 1


def test_suspend_after_a_final_reply_is_already_answered():
    proxy, wire = make(routing=hold)
    wire.send(request("OPTIONS"), ALICE)
    txn = last_txn(wire)
    wire.dispatch(proxy.reply(txn, 200, None, 0.0))
    assert proxy.suspend(txn, 0.0) == (SuspendOutcome.ALREADY_ANSWERED, [])
    assert proxy.reply(txn, 500, None, 0.0) == []  # only one final answer


def test_provisional_and_final_replies_while_suspended_are_held_back():
    """Relay, then suspend again (the re-suspend pitfall): downstream answers are stored,
    not relayed, until the blind branch is gone."""
    proxy, wire = make(routing=hold, fr_timer=1.0)
    invite = request("INVITE")
    wire.send(invite, ALICE)
    txn = last_txn(wire)
    wire.dispatch(proxy.relay(txn, 0.0))
    at_bob = wire.take_one(BOB)
    assert proxy.suspend(txn, 0.0)[0] is SuspendOutcome.SUSPENDED
    wire.send(answer(at_bob, 180), BOB)
    wire.send(answer(at_bob, 486), BOB)
    assert statuses(wire.take(ALICE)) == [100]
    wire.run_until(1.0)  # blind branch times out: best of (486, faked 408) goes up
    assert statuses(wire.take(ALICE)) == [408]


# ------------------------------------------------------------------ identities


def test_stale_ids_never_reach_another_transaction():
    proxy, wire = make(routing=suspend_all, wt_timer=1.0)
    first = request("OPTIONS", call_id="same", cseq=1)
    wire.send(first, ALICE)
    old = last_txn(wire)
    assert resume(wire, old, relay=False) is ContinueOutcome.RESUMED  # -> 500, freed later
    wire.run_until(5.0)
    assert proxy.request_of(old) is None
    again = request("OPTIONS", call_id="same", cseq=1)  # same bucket, new transaction
    wire.send(again, ALICE)
    new = last_txn(wire)
    assert new.index == old.index and new.label != old.label
    assert resume(wire, old) is ContinueOutcome.NOT_FOUND
    assert resume(wire, TxnId(old.index, old.label + 12345)) is ContinueOutcome.NOT_FOUND
    assert proxy.continue_transaction(new, wire.now)[0] is ContinueOutcome.RESUMED


def test_ids_are_deterministic_per_seed():
    def ids(seed: int) -> list[TxnId]:
        proxy, wire = make(routing=hold, label_seed=seed)
        for i in range(5):
            wire.send(request("OPTIONS", call_id=f"c{i % 2}", cseq=1), ALICE)
        return [d.txn for d in wire.delivered if d.txn is not None]

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    labels = [t.label for t in ids(1) if t.index == ids(1)[0].index]
    assert len(set(labels)) == len(labels)  # one counter per bucket, never reused


def test_request_of_returns_the_request_as_received():
    proxy, wire = make(routing=hold)
    invite = request("INVITE")
    wire.send(invite, ALICE)
    got = proxy.request_of(last_txn(wire))
    assert got is not None and bytes(got) == bytes(invite)


# ------------------------------------------------------------------ bad input


def raw(
    start: str = "INVITE sip:bob@10.0.0.3 SIP/2.0",
    via: str | None = "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKm1",
    max_forwards: str = "70",
    call_id: str = "m1",
    cseq: str = "1 INVITE",
) -> bytes:
    lines = [start]
    if via is not None:
        lines.append(f"Via: {via}")
    lines += [
        f"Max-Forwards: {max_forwards}",
        "From: <sip:a@a>;tag=1",
        "To: <sip:b@b>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", None),
        (b"\x00\xff garbage", None),
        (b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n", None),
        (raw(max_forwards="many"), 400),
        (raw(start="INVITE sip:bob@10.0.0.3 SIP/3.0", call_id="m2"), 505),
        (raw(via=None, call_id="m3"), None),  # no Via: nowhere to answer
        (raw(start="ACK sip:b@10.0.0.3 SIP/2.0", max_forwards="x", cseq="1 ACK"), None),
    ],
)
def test_malformed_datagrams_are_discarded_or_answered(data, status):
    proxy, wire = make()
    actions = proxy.receive(data, ALICE, 0.0)
    assert len(actions) == 1
    if status is None:
        assert isinstance(actions[0], Discarded)
        assert actions[0].source == ALICE
    else:
        assert isinstance(actions[0], Send) and actions[0].destination == ALICE
        answered = parse_message(bytes(actions[0].message))
        assert answered.status == status and answered.to_tag  # type: ignore[union-attr]
        assert answered.call_id.startswith("m")
    assert proxy.stats()["transactions_live"] == 0


def test_protocol_errors_are_discarded_not_raised():
    proxy, wire = make(routing=hold)
    invite = request("INVITE")
    wire.send(invite, ALICE)
    ack = ack_for_error(invite, make_response(invite, 486, None, "x"))
    wire.send(ack, ALICE)  # ACK while the INVITE server transaction is Proceeding
    assert len(wire.discarded) == 1 and "protocol error" in wire.discarded[0].reason


def valid_datagrams() -> list[bytes]:
    via = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKcafe.1.2.0"
    return [
        bytes(request("INVITE", body=b"v=0\r\n")),
        bytes(request("BYE", to_tag="t", routes=(OUR_RR,))),
        bytes(request("CANCEL")),
        bytes(make_response(request("INVITE", via=via), 200, None, "t")),
    ]


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(valid_datagrams()),
    cuts=st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=8)), max_size=4),
)
def test_mangled_input_never_raises(base, cuts):
    proxy = Proxy(ProxyConfig(PROXY))
    data = bytearray(base)
    for at, junk in cuts:
        at = min(at, len(data))
        data[at : at + len(junk)] = junk
    actions = proxy.receive(bytes(data), ALICE, 0.0)
    for action in actions:
        if isinstance(action, Discarded):
            assert not action.reason.startswith("internal error"), action.reason
    proxy.expire(100.0)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    proxy = Proxy(ProxyConfig(PROXY))
    for action in proxy.receive(data, ALICE, 0.0):
        assert isinstance(action, Discarded | Send)


def test_stats_count_what_happened():
    proxy, wire = make()
    invite, at_bob = invite_call(wire)
    wire.send(invite, ALICE)
    wire.send(answer(at_bob, 200), BOB)
    wire.send(b"junk", ALICE)
    stats = proxy.stats()
    assert stats["transactions_created"] == 1
    assert stats["transactions_live"] == 1
    assert stats["retransmissions_absorbed"] == 1
    assert stats["relayed"] == 1
    assert stats["discarded"] == 1 and stats["discarded:parse error"] == 1


def test_config_is_validated():
    with pytest.raises(ValueError):
        ProxyConfig(("10.0.0.1", 0))
    with pytest.raises(ValueError):
        ProxyConfig(PROXY, fr_timer=0)
    with pytest.raises(ValueError):
        ProxyConfig(PROXY, max_branches=0)
