"""Simulated SIP user agents: the UAC that plays the load's call flow, and a strict UAS.

Each call is the flow the deferral exists for (one dialog, CSeq 1, 2, ...):

    INVITE -> (100 from the proxy) -> 200 -> ACK, then `reinvites` times
    [gap] re-INVITE -> 200 -> ACK, then [gap] BYE -> 200.

Both agents are sans-IO like the core: they take `now`, return the `Send`s to do, and
expose `next_deadline()` / `expire(now)`. Retransmissions over UDP are the core's RFC 3261
client and server transactions (`core.transaction`); the UA cores above them do what
§13 asks of them: the UAC acknowledges every 2xx (again on each retransmitted 2xx), the UAS
retransmits its 2xx until the ACK comes (§13.3.1.4), giving up after 64·T1.

This module is their public face: it re-exports the names below from where they live, so
the targets and tests import the agents from here.

- `harness.load.agent`: what both share: the timer-driven `Endpoint` base and the
  `ReinviteObserver` each re-INVITE is reported to, under key (Call-ID, CSeq number);
- `harness.load.uac`: `Uac`, the call flow with its routing and timing choices, and
  `CallRecord` / `ReinviteTiming`, what it records;
- `harness.load.uas`: `Uas`, the strict UAS (491 to a re-INVITE that overtook an ACK).

What this module must not do: hold code of its own (the agents never import it), read a
clock, sleep, or touch a socket (the sim target and the live target drive the agents), or
know which strategy the proxy runs.
"""

from harness.load.agent import NO_OBSERVER, Key, ReinviteObserver
from harness.load.uac import LINGER, CallRecord, ReinviteTiming, Uac, uri_address
from harness.load.uas import Uas

__all__ = [
    "LINGER",
    "NO_OBSERVER",
    "CallRecord",
    "Key",
    "ReinviteObserver",
    "ReinviteTiming",
    "Uac",
    "Uas",
    "uri_address",
]
