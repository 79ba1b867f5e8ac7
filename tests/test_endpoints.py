"""The simulated UAC and UAS (harness.load.endpoints), joined by an in-memory wire, no proxy.

The wire is h11's "two endpoints and a wire": a heap of datagrams in virtual time with a
fixed one-way delay, plus a hook that may drop or hold back a datagram, which is how a
race (re-INVITE overtaking its ACK) or a loss is made to happen on purpose.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import pytest

from core.events import Address, Send
from core.sip import SipMessage, SipRequest, SipResponse, parse_message
from harness.load.endpoints import Uac, Uas
from harness.measure.ledger import Ledger

UAC: Address = ("10.0.0.2", 5061)
UAS: Address = ("10.0.0.3", 5062)
ONE_WAY = 0.001

# hook(message, source, destination, now) -> None (deliver), "drop", or extra delay (s)
Hook = Callable[[SipMessage, Address, Address, float], object]


def describe(message: SipMessage) -> str:
    """'INVITE 2', 'ACK 1', '200 INVITE 2', '491 INVITE 3' ..."""
    cseq = message.cseq
    if isinstance(message, SipRequest):
        return f"{message.method} {cseq.number}"
    assert isinstance(message, SipResponse)
    return f"{message.status} {cseq.method} {cseq.number}"


class Wire:
    """A UAC and a UAS exchanging datagrams in virtual time."""

    def __init__(self, uac: Uac, uas: Uas, hook: Hook | None = None) -> None:
        self.agents = {UAC: uac, UAS: uas}
        self.uac = uac
        self.uas = uas
        self.hook = hook
        self.now = 0.0
        self.log: list[tuple[float, str, str]] = []  # (time sent, Call-ID, what)
        self._queue: list[tuple[float, int, Address, SipMessage, Address]] = []
        self._seq = itertools.count()

    def send(self, sends: list[Send], source: Address) -> None:
        for send in sends:
            message, destination = send.message, send.destination
            self.log.append((self.now, message.call_id, describe(message)))
            delay = ONE_WAY
            verdict = self.hook(message, source, destination, self.now) if self.hook else None
            if verdict == "drop":
                continue
            if isinstance(verdict, float):
                delay += verdict
            entry = (self.now + delay, next(self._seq), destination, message, source)
            heapq.heappush(self._queue, entry)

    def start(self, index: int, at: float = 0.0) -> None:
        self.run(at)
        self.send(self.uac.start_call(index, self.now, at), UAC)

    def run(self, until: float) -> None:
        """Deliver datagrams and fire both agents' timers in time order up to `until`."""
        while True:
            candidates = [(self._queue[0][0], 0)] if self._queue else []
            for rank, address in ((1, UAC), (2, UAS)):
                deadline = self.agents[address].next_deadline()
                if deadline is not None:
                    candidates.append((deadline, rank))
            if not candidates:
                break
            when, rank = min(candidates)
            if when > until:
                break
            self.now = max(self.now, when)
            if rank == 0:
                _, _, destination, message, source = heapq.heappop(self._queue)
                agent = self.agents.get(destination)
                if agent is not None:
                    self.send(agent.receive(message, source, self.now), destination)
            else:
                address = UAC if rank == 1 else UAS
                self.send(self.agents[address].expire(self.now), address)
        self.now = max(self.now, until)

    def sent(self, what: str) -> list[float]:
        """Times at which a datagram described as `what` was sent."""
        return [t for t, _, w in self.log if w == what]


def agents(reinvites: int = 3, gap: float = 0.002, race_code: int = 491):
    ledger = Ledger(race_code=race_code)
    uac = Uac(
        UAC, UAS, reinvites=reinvites, gap=gap, observer=ledger, keep_timings=True, keep_calls=True
    )
    uas = Uas(UAS, race_code=race_code, observer=ledger)
    return uac, uas, ledger


def test_calls_complete_over_a_direct_wire() -> None:
    uac, uas, ledger = agents(reinvites=3)
    wire = Wire(uac, uas)
    for i in range(5):
        wire.start(i, at=i * 0.01)
    wire.run(60.0)

    assert [c.outcome for c in uac.calls] == ["completed"] * 5
    assert uac.active == 0 and uas.dialogs == 0
    summary = ledger.close()
    assert summary.transactions == 15
    assert summary.resumed == 15 and summary.clean
    # Each dialog's messages, in order: the flow of the issue, CSeq rising by one.
    for call in uac.calls:
        assert [w for _, c, w in wire.log if c == call.call_id] == [
            "INVITE 1",
            "200 INVITE 1",
            "ACK 1",
            "INVITE 2",
            "200 INVITE 2",
            "ACK 2",
            "INVITE 3",
            "200 INVITE 3",
            "ACK 3",
            "INVITE 4",
            "200 INVITE 4",
            "ACK 4",
            "BYE 5",
            "200 BYE 5",
        ]
    assert uas.counters["races"] == 0 and uas.counters["2xx retransmitted"] == 0


def test_reinvite_goes_gap_after_the_ack_and_is_timed_from_then() -> None:
    uac, uas, ledger = agents(reinvites=2, gap=0.004)
    wire = Wire(uac, uas)
    wire.start(0)
    wire.run(10.0)

    acks = wire.sent("ACK 1") + wire.sent("ACK 2")
    reinvites = wire.sent("INVITE 2") + wire.sent("INVITE 3")
    assert [r - a for a, r in zip(acks, reinvites, strict=True)] == pytest.approx([0.004] * 2)
    for (call_id, cseq), timing in uac.timings.items():
        assert call_id == uac.calls[0].call_id
        assert timing.intended == pytest.approx(wire.sent(f"ACK {cseq - 1}")[0] + 0.004)
        # final answer at the UAC: two one-way trips after the send
        assert timing.e2e == pytest.approx(2 * ONE_WAY)
        assert timing.status == 200


def test_intended_time_does_not_move_when_the_uac_runs_late() -> None:
    """Coordinated omission: a UAC driven late still measures from when it should have sent."""
    uac, uas, _ = agents(reinvites=1, gap=0.004)
    sends = uac.start_call(0, 0.0, intended=0.0)
    invite = sends[0].message
    ok = uas.receive(invite, UAC, 0.001)[0].message
    (ack,) = uac.receive(ok, UAS, 0.002)
    assert ack.message.method == "ACK"
    assert uac.next_deadline() == pytest.approx(0.006)
    late = uac.expire(0.050)  # the driver only got round to it 44 ms late
    assert [s.message.method for s in late] == ["INVITE"]
    timing = next(iter(uac.timings.values()))
    assert timing.intended == pytest.approx(0.006)
    assert timing.sent == pytest.approx(0.050)
    reply = uas.receive(late[0].message, UAC, 0.051)
    uac.receive(reply[0].message, UAS, 0.052)
    assert timing.e2e == pytest.approx(0.046)


def test_uas_answers_race_code_to_a_reinvite_that_overtook_its_ack() -> None:
    """Hold the first ACK back 1.5 ms: the re-INVITE sent with it (gap 0) reaches the UAS
    first; the next re-INVITE leaves after the 491 came back, behind the late ACK."""
    uac, uas, ledger = agents(reinvites=2, gap=0.0)

    def hold_first_ack(message: SipMessage, source: Address, dest: Address, now: float):
        if describe(message) == "ACK 1":
            return 0.0015
        return None

    wire = Wire(uac, uas, hold_first_ack)
    wire.start(0)
    wire.run(60.0)

    assert "491 INVITE 2" in [w for _, _, w in wire.log]
    call_id = uac.calls[0].call_id
    assert ledger.outcome((call_id, 2)) == "race_491"
    assert uac.timings[(call_id, 2)].status == 491
    # The UAC goes on with the call: the next re-INVITE and the BYE still happen.
    assert ledger.outcome((call_id, 3)) == "resumed"
    assert uac.calls[0].outcome == "completed"
    assert uas.counters["races"] == 1
    # The late ACK still ended the first 2xx's retransmissions.
    assert uas.counters["2xx never acknowledged"] == 0


def test_race_code_is_configurable() -> None:
    uac, uas, ledger = agents(reinvites=1, gap=0.0, race_code=500)

    def drop_first_ack(message: SipMessage, source: Address, dest: Address, now: float):
        return "drop" if describe(message) == "ACK 1" and now < 0.1 else None

    wire = Wire(uac, uas, drop_first_ack)
    wire.start(0)
    wire.run(60.0)
    assert "500 INVITE 2" in [w for _, _, w in wire.log]
    assert ledger.close().race_491 == 1  # the ledger counts its race code, whatever it is


def test_uas_retransmits_2xx_until_the_ack_and_uac_acks_again() -> None:
    """Lose the first ACK: the UAS re-sends 200 after T1, the UAC answers it with the ACK."""
    uac, uas, ledger = agents(reinvites=1, gap=1.0)

    def drop_first_ack(message: SipMessage, source: Address, dest: Address, now: float):
        return "drop" if describe(message) == "ACK 1" and now < 0.1 else None

    wire = Wire(uac, uas, drop_first_ack)
    wire.start(0)
    wire.run(60.0)

    sent_200 = wire.sent("200 INVITE 1")
    assert len(sent_200) == 2
    assert sent_200[1] - sent_200[0] == pytest.approx(0.5)  # T1
    assert len(wire.sent("ACK 1")) == 2
    assert uac.counters["acks resent"] == 1
    assert uas.counters["2xx retransmitted"] == 1
    assert uas.counters["2xx acknowledged"] == 2  # the INVITE's and the re-INVITE's
    assert ledger.close().clean


def test_2xx_retransmissions_double_up_to_t2_and_stop_after_64_t1() -> None:
    uac, uas, _ = agents(reinvites=1, gap=100.0)

    def drop_acks(message: SipMessage, source: Address, dest: Address, now: float):
        return "drop" if describe(message) == "ACK 1" else None

    wire = Wire(uac, uas, drop_acks)
    wire.start(0)
    wire.run(40.0)
    times = wire.sent("200 INVITE 1")
    intervals = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert intervals[:4] == [0.5, 1.0, 2.0, 4.0]
    assert set(intervals[4:]) == {4.0}
    assert times[-1] - times[0] < 32.0
    assert uas.counters["2xx never acknowledged"] == 1


def test_lost_reinvite_answer_is_retransmitted_and_absorbed_by_the_uas() -> None:
    """Lose the 200 to the re-INVITE once: Timer A re-sends the re-INVITE, the UAS's server
    transaction answers it from state (no second INVITE reaches its core)."""
    uac, uas, ledger = agents(reinvites=1, gap=0.002)
    lost = []

    def drop_once(message: SipMessage, source: Address, dest: Address, now: float):
        if describe(message) == "200 INVITE 2" and not lost:
            lost.append(now)
            return "drop"
        return None

    wire = Wire(uac, uas, drop_once)
    wire.start(0)
    wire.run(60.0)

    assert len(wire.sent("INVITE 2")) == 2
    assert uas.counters["INVITE received"] == 2  # INVITE 1 and INVITE 2, once each
    key = (uac.calls[0].call_id, 2)
    assert uac.timings[key].retransmissions == 1
    summary = ledger.close()
    assert summary.retransmissions == 1 and summary.resumed == 1
    assert uac.timings[key].e2e == pytest.approx(0.5 + 2 * ONE_WAY)


def test_reinvite_that_gets_no_answer_counts_as_408_and_the_call_goes_on() -> None:
    uac, uas, ledger = agents(reinvites=2, gap=0.002)

    def drop_invite_2(message: SipMessage, source: Address, dest: Address, now: float):
        return "drop" if describe(message) == "INVITE 2" else None

    wire = Wire(uac, uas, drop_invite_2)
    wire.start(0)
    wire.run(120.0)
    call_id = uac.calls[0].call_id
    assert ledger.outcome((call_id, 2)) == "timeout_408"
    assert ledger.outcome((call_id, 3)) == "resumed"
    assert uac.calls[0].outcome == "completed"
    assert uac.timings[(call_id, 2)].final_at == pytest.approx(uac.timings[(call_id, 2)].sent + 32)


def test_uas_rejects_out_of_order_cseq_with_500_and_ledger_sees_reordering() -> None:
    ledger = Ledger()
    uas = Uas(UAS, observer=ledger)
    uac = Uac(UAC, UAS, reinvites=3, gap=0.0, observer=ledger, keep_calls=True)
    invite = uac.start_call(0, 0.0)[0].message
    ok = uas.receive(invite, UAC, 0.0)[0].message
    ack, reinvite_2 = (s.message for s in uac.receive(ok, UAS, 0.0))
    uas.receive(ack, UAC, 0.0)
    ok_2 = uas.receive(reinvite_2, UAC, 0.0)[0].message
    ack_2, reinvite_3 = (s.message for s in uac.receive(ok_2, UAS, 0.0))
    uas.receive(ack_2, UAC, 0.0)
    ok_3 = uas.receive(reinvite_3, UAC, 0.0)[0].message
    ack_3, reinvite_4 = (s.message for s in uac.receive(ok_3, UAS, 0.0))
    uas.receive(ack_3, UAC, 0.0)
    # CSeq 2 again, as a new transaction (as if a proxy relayed it a second time, late)
    replay = reinvite_2.copy()
    replay.set("Via", "SIP/2.0/UDP 10.0.0.2:5061;branch=z9hG4bK-replayed")
    (answer,) = uas.receive(replay, UAC, 0.0)
    assert answer.message.status == 500
    assert ledger.outcome((invite.call_id, 2)) == "reordered"
    assert uas.counters["out of order"] == 1


def test_uas_answer_carries_contact_record_route_and_a_tag() -> None:
    uas = Uas(UAS)
    uac = Uac(UAC, UAS, reinvites=1, gap=0.0, outbound_proxy=("10.0.0.1", 5060))
    invite = uac.start_call(7, 0.0)[0].message
    assert invite.get_all("Route") == ["<sip:10.0.0.1:5060;lr>"]
    relayed = invite.copy()  # as a record-routing proxy would forward it
    relayed.prepend("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKproxy1")
    relayed.prepend("Record-Route", "<sip:10.0.0.1:5060;lr>")
    relayed.remove_first_value("Route")
    (send,) = uas.receive(relayed, ("10.0.0.1", 5060), 0.0)
    ok = send.message
    assert send.destination == ("10.0.0.1", 5060)  # back along the top Via
    assert ok.status == 200 and ok.to_tag
    assert ok.get_all("Record-Route") == ["<sip:10.0.0.1:5060;lr>"]
    assert ok.get("Contact") == f"<sip:uas@{UAS[0]}:{UAS[1]}>"
    # The UAC builds its dialog from it: ACK and re-INVITE go to the proxy, to the Contact.
    ok.remove_first_value("Via")
    ack, reinvite = uac.receive(ok, ("10.0.0.1", 5060), 0.001)
    for send in (ack, reinvite):
        assert send.destination == ("10.0.0.1", 5060)
        assert send.message.uri == f"sip:uas@{UAS[0]}:{UAS[1]}"
        assert send.message.get_all("Route") == ["<sip:10.0.0.1:5060;lr>"]
        assert send.message.to_tag == ok.to_tag
    assert ack.message.top_via.branch != invite.top_via.branch  # ACK for 2xx: own txn


def test_messages_are_deterministic_and_survive_the_parser() -> None:
    """Same call index, same bytes; and every message parses back to an equal one."""
    first = Uac(UAC, UAS, reinvites=1, gap=0.0).start_call(42, 1.0)[0].message
    second = Uac(UAC, UAS, reinvites=1, gap=0.0).start_call(42, 9.0)[0].message
    assert bytes(first) == bytes(second)
    assert parse_message(bytes(first)) == first
    other = Uac(UAC, UAS, reinvites=1, gap=0.0).start_call(43, 1.0)[0].message
    assert other.call_id != first.call_id and other.top_via.branch != first.top_via.branch


def test_failed_invite_ends_the_call_without_reinvites() -> None:
    uac = Uac(UAC, UAS, reinvites=3, gap=0.0, observer=Ledger(), keep_calls=True)
    invite = uac.start_call(0, 0.0)[0].message
    from core.sip import make_response

    busy = make_response(invite, 486, to_tag="x")
    sends = uac.receive(busy, UAS, 0.001)
    assert [s.message.method for s in sends] == ["ACK"]  # the transaction's own ACK
    assert uac.calls[0].outcome == "failed" and uac.active == 0
    assert uac.timings == {}
