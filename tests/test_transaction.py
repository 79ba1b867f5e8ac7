"""RFC 3261 §17 transactions driven with no I/O: tables, timers at exact virtual times,
matching keys, and the ACK/CANCEL builders."""

from __future__ import annotations

import pytest

from core.events import Send
from core.sip import SipRequest, SipResponse, make_response, parse_message
from core.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    TERMINATED,
    TRANSITIONS,
    ClientTransaction,
    PassToUser,
    ServerTransaction,
    TimerHeap,
    TimerSettings,
    TransactionError,
    TransactionTimeout,
    client_key,
    describe,
    expire,
    invite_key,
    make_ack,
    make_cancel,
    server_key,
)

UPSTREAM = ("10.0.0.2", 5060)
NEXT_HOP = ("10.0.0.3", 5060)
SETTINGS = TimerSettings()


def req(method: str, branch: str = "z9hG4bK-1", *, host: str = "10.0.0.2:5060") -> SipRequest:
    data = (
        f"{method} sip:bob@10.0.0.3 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:10.0.0.9;lr>\r\n"
        "From: <sip:alice@a.example>;tag=a1\r\n"
        "To: <sip:bob@b.example>\r\n"
        "Call-ID: c-1\r\n"
        f"CSeq: 7 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def resp(request: SipRequest, status: int) -> SipResponse:
    return make_response(request, status, None, None if status == 100 else "b1")


class Clock:
    """Runs a TimerHeap in virtual time and records what each transaction emitted."""

    def __init__(self) -> None:
        self.heap = TimerHeap()
        self.now = 0.0
        self.log: list[tuple[float, object]] = []

    def run_until(self, when: float) -> None:
        while (deadline := self.heap.next_deadline()) is not None and deadline <= when:
            self.now = deadline
            entry = self.heap.pop_due(deadline)
            assert entry is not None
            for out in entry[2].on_timer(entry[3], self.now):
                self.log.append((self.now, out))
        self.now = when

    def sends(self) -> list[float]:
        return [t for t, out in self.log if isinstance(out, Send)]

    def outputs(self, kind: type) -> list[tuple[float, object]]:
        return [(t, out) for t, out in self.log if isinstance(out, kind)]


# ------------------------------------------------------------------ the tables


def test_table_is_printable_data():
    text = describe()
    assert text.count("\n") + 1 == len(TRANSITIONS)
    assert "INVITE client" in text and "--timer_A-->" in text


@pytest.mark.parametrize(
    ("factory", "state", "event"),
    [
        ("client_invite", "completed", "1xx"),
        ("client_invite", "accepted", "300-699"),
        ("server_invite", "proceeding", "ack"),
        ("server_non_invite", "completed", "tu_2xx"),
    ],
)
def test_missing_entry_is_a_protocol_error_naming_kind_state_event(factory, state, event):
    clock = Clock()
    if factory == "client_invite":
        txn = ClientTransaction(req("INVITE"), NEXT_HOP, clock.heap, SETTINGS)
        kind = INVITE_CLIENT
    elif factory == "server_invite":
        txn = ServerTransaction(req("INVITE"), UPSTREAM, clock.heap, SETTINGS)
        kind = INVITE_SERVER
    else:
        txn = ServerTransaction(req("OPTIONS"), UPSTREAM, clock.heap, SETTINGS)
        kind = NON_INVITE_SERVER
    txn.state = state
    with pytest.raises(TransactionError) as info:
        txn._fire(event, None, 0.0)
    assert (info.value.kind, info.value.state, info.value.event) == (kind, state, event)
    assert kind in str(info.value) and state in str(info.value) and event in str(info.value)


def test_every_table_effect_is_known():
    # the tables compile at import; a typo in an effect would have raised there
    kinds = {key[0] for key in TRANSITIONS}
    assert kinds == {INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER}


# ------------------------------------------------------------------ INVITE client


def test_invite_client_timer_a_doubles_until_timer_b():
    clock = Clock()
    txn = ClientTransaction(req("INVITE"), NEXT_HOP, clock.heap, SETTINGS)
    first = txn.start(0.0)
    assert first == [Send(txn.request, NEXT_HOP)]
    assert txn.state == "calling"
    clock.run_until(40.0)
    assert clock.sends() == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert clock.outputs(TransactionTimeout) == [(32.0, TransactionTimeout("B"))]
    assert (32.0, TERMINATED) in clock.log
    assert txn.state == "terminated" and clock.heap.next_deadline() is None


def test_invite_client_provisional_stops_retransmissions_and_timer_b():
    clock = Clock()
    txn = ClientTransaction(req("INVITE"), NEXT_HOP, clock.heap, SETTINGS)
    txn.start(0.0)
    clock.run_until(0.7)
    out = txn.receive_response(resp(txn.request, 180), 0.7)
    assert [type(o) for o in out] == [PassToUser]
    assert txn.state == "proceeding"
    clock.run_until(100.0)
    assert clock.sends() == [0.5]
    assert txn.state == "proceeding"  # no Timer B in Proceeding: the TU must CANCEL


def test_invite_client_2xx_reaches_the_user_every_time_until_timer_m():
    clock = Clock()
    txn = ClientTransaction(req("INVITE"), NEXT_HOP, clock.heap, SETTINGS)
    txn.start(0.0)
    ok = resp(txn.request, 200)
    assert txn.receive_response(ok, 0.1) == [PassToUser(ok)]
    assert txn.state == "accepted"
    assert txn.receive_response(ok, 0.6) == [PassToUser(ok)]
    assert txn.timer_deadline("M") == pytest.approx(0.1 + 32.0)
    clock.run_until(32.0)
    assert txn.state == "accepted"
    clock.run_until(32.1)
    assert txn.state == "terminated"


def test_invite_client_error_is_acked_hop_by_hop_and_retransmissions_reacked():
    clock = Clock()
    txn = ClientTransaction(req("INVITE"), NEXT_HOP, clock.heap, SETTINGS)
    txn.start(0.0)
    busy = resp(txn.request, 486)
    out = txn.receive_response(busy, 1.0)
    assert [type(o) for o in out] == [Send, PassToUser]
    ack = out[0].message
    assert out[0].destination == NEXT_HOP
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.uri == txn.request.uri
    assert ack.top_via.branch == txn.request.top_via.branch
    assert ack.to_tag == "b1" and ack.cseq.number == 7 and ack.cseq.method == "ACK"
    assert ack.get_all("Route") == ["<sip:10.0.0.9;lr>"]
    again = txn.receive_response(busy, 2.0)
    assert [type(o) for o in again] == [Send]  # not passed up a second time
    assert txn.state == "completed"
    clock.run_until(1.0 + 31.9)
    assert txn.state == "completed"
    clock.run_until(1.0 + 32.0)
    assert txn.state == "terminated"
    assert clock.sends() == []  # retransmissions stopped at the 486


# ------------------------------------------------------------------ non-INVITE client


def test_non_invite_client_timer_e_caps_at_t2_until_timer_f():
    clock = Clock()
    txn = ClientTransaction(req("OPTIONS"), NEXT_HOP, clock.heap, SETTINGS)
    txn.start(0.0)
    clock.run_until(40.0)
    assert clock.sends() == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert clock.outputs(TransactionTimeout) == [(32.0, TransactionTimeout("F"))]
    assert txn.state == "terminated"


def test_non_invite_client_in_proceeding_retransmits_every_t2():
    clock = Clock()
    txn = ClientTransaction(req("OPTIONS"), NEXT_HOP, clock.heap, SETTINGS)
    txn.start(0.0)
    clock.run_until(0.2)
    txn.receive_response(resp(txn.request, 100), 0.2)
    assert txn.state == "proceeding"
    clock.run_until(10.0)
    assert clock.sends() == [0.5, 4.5, 8.5]


def test_non_invite_client_final_then_timer_k_absorbs_retransmitted_finals():
    clock = Clock()
    txn = ClientTransaction(req("OPTIONS"), NEXT_HOP, clock.heap, SETTINGS)
    txn.start(0.0)
    clock.run_until(1.0)
    ok = resp(txn.request, 200)
    assert txn.receive_response(ok, 1.0) == [PassToUser(ok)]
    assert txn.receive_response(ok, 2.0) == []
    clock.run_until(5.99)
    assert txn.state == "completed"
    clock.run_until(6.0)
    assert txn.state == "terminated"
    assert clock.sends() == [0.5]


# ------------------------------------------------------------------ INVITE server


def test_invite_server_resends_last_response_on_retransmission():
    clock = Clock()
    txn = ServerTransaction(req("INVITE"), UPSTREAM, clock.heap, SETTINGS)
    assert txn.start(0.0) == [PassToUser(txn.request)]
    assert txn.receive_request(txn.request, 0.1) == []  # nothing sent yet: nothing re-sent
    trying = resp(txn.request, 100)
    assert txn.send_response(trying, 0.2) == [Send(trying, UPSTREAM)]
    assert txn.receive_request(txn.request, 0.3) == [Send(trying, UPSTREAM)]
    ringing = resp(txn.request, 180)
    txn.send_response(ringing, 0.4)
    assert txn.receive_request(txn.request, 0.5) == [Send(ringing, UPSTREAM)]


def test_invite_server_error_retransmitted_by_timer_g_until_timer_h():
    clock = Clock()
    txn = ServerTransaction(req("INVITE"), UPSTREAM, clock.heap, SETTINGS)
    txn.start(0.0)
    busy = resp(txn.request, 486)
    assert txn.send_response(busy, 1.0) == [Send(busy, UPSTREAM)]
    assert txn.state == "completed"
    clock.run_until(40.0)
    assert clock.sends() == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert clock.outputs(TransactionTimeout) == [(33.0, TransactionTimeout("H"))]
    assert txn.state == "terminated"


def test_invite_server_ack_stops_timer_g_and_timer_i_terminates():
    clock = Clock()
    txn = ServerTransaction(req("INVITE"), UPSTREAM, clock.heap, SETTINGS)
    txn.start(0.0)
    busy = resp(txn.request, 486)
    txn.send_response(busy, 0.0)
    clock.run_until(0.7)
    ack = make_ack(txn.request, busy)
    assert server_key(ack) == txn.key
    assert txn.receive_request(ack, 0.7) == []
    assert txn.state == "confirmed"
    assert txn.receive_request(ack, 0.8) == []  # further ACKs absorbed
    clock.run_until(5.69)
    assert txn.state == "confirmed"
    clock.run_until(5.7)
    assert txn.state == "terminated"
    assert clock.sends() == [0.5]


def test_invite_server_2xx_accepted_passes_acks_and_resends_2xx():
    clock = Clock()
    txn = ServerTransaction(req("INVITE"), UPSTREAM, clock.heap, SETTINGS)
    txn.start(0.0)
    ok = resp(txn.request, 200)
    txn.send_response(ok, 1.0)
    assert txn.state == "accepted"
    assert txn.send_response(ok, 1.5) == [Send(ok, UPSTREAM)]  # 2xx retransmission from TU
    ack = make_ack(txn.request, ok)
    assert txn.receive_request(ack, 1.6) == [PassToUser(ack)]
    clock.run_until(33.0)
    assert txn.state == "terminated"


# ------------------------------------------------------------------ non-INVITE server


def test_non_invite_server_absorbs_then_resends_final_until_timer_j():
    clock = Clock()
    txn = ServerTransaction(req("OPTIONS"), UPSTREAM, clock.heap, SETTINGS)
    txn.start(0.0)
    assert txn.receive_request(txn.request, 0.5) == []  # Trying: absorbed silently
    ok = resp(txn.request, 200)
    assert txn.send_response(ok, 1.0) == [Send(ok, UPSTREAM)]
    assert txn.receive_request(txn.request, 2.0) == [Send(ok, UPSTREAM)]
    clock.run_until(32.99)
    assert txn.state == "completed"
    clock.run_until(33.0)
    assert txn.state == "terminated"
    with pytest.raises(TransactionError):
        txn.receive_request(txn.request, 34.0)


# ------------------------------------------------------------------ matching


def test_server_key_matches_ack_and_cancel_to_their_invite():
    invite = req("INVITE")
    ack = req("ACK")
    cancel = req("CANCEL")
    assert server_key(ack) == server_key(invite)
    assert server_key(cancel) != server_key(invite)
    assert invite_key(cancel) == server_key(invite)
    assert server_key(req("INVITE", "z9hG4bK-2")) != server_key(invite)
    assert server_key(req("INVITE", host="10.0.0.5:5060")) != server_key(invite)


def test_rfc2543_requests_fall_back_to_dialog_fields():
    old = req("INVITE", "oldstyle-1")
    assert server_key(old)[0] == "rfc2543"
    assert server_key(req("ACK", "oldstyle-1")) == server_key(old)
    assert invite_key(req("CANCEL", "oldstyle-1")) == server_key(old)


def test_client_key_is_branch_and_cseq_method():
    invite = req("INVITE")
    assert client_key(resp(invite, 200)) == ("z9hG4bK-1", "INVITE")
    cancel = make_cancel(invite)
    assert client_key(resp(cancel, 200)) == ("z9hG4bK-1", "CANCEL")


def test_make_cancel_copies_what_9_1_requires():
    invite = req("INVITE")
    cancel = make_cancel(invite)
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert cancel.get_all("Via") == invite.get_all("Via")[:1]
    for name in ("From", "To", "Call-ID"):
        assert cancel.get(name) == invite.get(name)
    assert cancel.cseq.number == invite.cseq.number and cancel.cseq.method == "CANCEL"
    assert cancel.get_all("Route") == invite.get_all("Route")
    assert parse_message(bytes(cancel)).method == "CANCEL"


# ------------------------------------------------------------------ timer heap


def test_timer_heap_lazy_deletion_keeps_next_deadline_exact():
    heap = TimerHeap()
    a = heap.schedule(1.0, "a", "x")
    heap.schedule(2.0, "b", "x")
    heap.schedule(2.0, "c", "x")
    assert heap.next_deadline() == 1.0
    heap.cancel(a)
    heap.cancel(a)  # idempotent
    assert heap.next_deadline() == 2.0 and len(heap) == 2
    assert heap.pop_due(1.99) is None
    assert heap.pop_due(2.0)[2] == "b"  # ties fire in schedule order
    assert heap.pop_due(2.0)[2] == "c"
    assert heap.pop_due(100.0) is None and heap.next_deadline() is None


def test_timer_heap_compacts_dead_entries():
    heap = TimerHeap()
    entries = [heap.schedule(float(i), i, "x") for i in range(5000)]
    for entry in entries[:4000]:
        heap.cancel(entry)
    assert len(heap) == 1000
    assert len(heap._heap) < 5000  # compacted, not just marked
    assert heap.next_deadline() == 4000.0


def test_timer_settings_validated():
    with pytest.raises(ValueError):
        TimerSettings(t1=0.0)
    with pytest.raises(ValueError):
        TimerSettings(t1=5.0, t2=4.0)
    assert TimerSettings(t1=0.25).initial("B") == 16.0


def test_expire_fires_due_transaction_timers_for_a_user_agent():
    heap = TimerHeap()
    uac = ClientTransaction(req("OPTIONS"), NEXT_HOP, heap, SETTINGS)
    uas = ServerTransaction(req("INVITE", "z9hG4bK-2"), UPSTREAM, heap, SETTINGS)
    uac.start(0.0)
    uas.start(0.0)
    uas.send_response(resp(uas.request, 486), 0.0)
    assert expire(heap, 0.49) == []
    fired = expire(heap, 0.5)
    assert [txn for txn, _ in fired] == [uac, uas]  # same deadline: schedule order
    assert all(isinstance(out[0], Send) for _, out in fired)
    assert heap.next_deadline() == 1.5


# ------------------------------------------------------------------ lingering


def test_settled_transactions_linger_in_a_queue_without_timer_state():
    """Once settled, a transaction keeps no timer dict and no live heap entry (its linger
    timer waits in the heap's queue, one tuple); it still absorbs retransmissions and ends
    at the exact time, in schedule order."""
    clock = Clock()
    settled = []
    for n in range(50):
        txn = ServerTransaction(req("INVITE", f"z9hG4bK-{n}"), UPSTREAM, clock.heap, SETTINGS)
        txn.start(0.0)
        ok = resp(txn.request, 200)
        txn.send_response(ok, 1.0)
        txn.settle()
        settled.append((txn, ok))
    other = clock.heap.schedule(33.0, "own timer", "x")  # ties with every Timer L
    queued = sum(len(queue) for queue in clock.heap._lingering.values())
    assert queued == 50 and len(clock.heap) == 51
    assert [e[2] for e in clock.heap._heap if e[4]] == ["own timer"]  # carriers are dead
    assert all(txn._timers is None for txn, _ in settled)
    first, ok = settled[0]
    assert first.receive_request(req("INVITE", "z9hG4bK-0"), 2.0) == [Send(ok, UPSTREAM)]
    assert first.timer_deadline("L") == 33.0 and first.timer_deadline("M") is None
    settled[1][0].terminate()  # ended early: its queue entry is skipped
    assert len(clock.heap) == 50
    fired = []
    while (entry := clock.heap.pop_due(33.0)) is not None:
        fired.append(entry[2])
        if entry[2] is not other[2]:
            entry[2].on_timer(entry[3], 33.0)
    lingering = [txn for txn, _ in settled]
    assert fired == [lingering[0], *lingering[2:], "own timer"]  # schedule order, as before
    assert all(txn.terminated for txn in lingering) and len(clock.heap) == 0


def test_a_lingering_client_transaction_fires_timer_m_when_it_always_did():
    clock = Clock()
    txn = ClientTransaction(req("INVITE"), NEXT_HOP, clock.heap, SETTINGS, owner="call")
    txn.start(0.0)
    ok = resp(txn.request, 200)
    txn.receive_response(ok, 0.1)
    txn.settle()
    assert txn._timers is None and txn.request is None
    assert [len(q) for q in clock.heap._lingering.values()] == [1]  # Timer M, queued
    assert clock.heap.next_deadline() == pytest.approx(32.1)
    assert txn.receive_response(ok, 0.6) == [PassToUser(ok)]
    clock.run_until(32.0)
    assert txn.state == "accepted"
    clock.run_until(32.2)
    assert txn.terminated and clock.heap.next_deadline() is None
