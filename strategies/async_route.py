"""`async-route`: Kamailio's `async_ms_route(R, ms)` (or `async_route(R, s)` with `s=`).

The request is suspended and, once the async module's timer finds it due, the whole named
route `route[RESUME]` runs as its continuation (`t_continue` + `t_relay()`):

- ms form (reference §3): the one "ASYNC MOD MS TIMER" hands the item to the *core* task
  pool (`async_workers`), so D = ms + [0, ms_timer + ε + pass) + wait for a task worker,
  never less than ms; without `async_workers` every transaction strands until its 408.
- seconds form (§2): an "ASYNC MOD TIMER" runs the route itself at its first pass in
  second get_ticks() + s, so D ∈ (s − 1, s + 1) and is usually *short* of s; LIFO within
  one second; a timer whose phase wraps skips a second (5.6.3) and its items end in 408.

All the machinery is in `strategies.async_module`; this module only names the call.
"""

from __future__ import annotations

from strategies.async_module import AsyncModuleStrategy
from strategies.inline import trace_line


class AsyncRoute(AsyncModuleStrategy):
    """async_ms_route("RESUME", ms) / async_route("RESUME", s): resume in a named route."""

    name = "async-route"
    summary = (
        "async module: async_ms_route(R, ms) via the ms timer and the core async_workers "
        "pool, or async_route(R, s) via the seconds ring (s=)"
    )

    def call_name(self) -> str:
        return "async_route" if self.seconds_form else "async_ms_route"

    def deferral_block(self, trace: bool = False) -> str:
        return (
            (trace_line("suspend", "\t\t\t") if trace else "")
            + "\t\t\t# Suspends the transaction (100 Trying at once) and exits the script;\n"
            "\t\t\t# route[RESUME] runs later, as a continuation, in another process.\n"
            f'\t\t\t{self.call_name()}("RESUME", "{self.delay_argument}");\n'
            "\t\t\t# Reached only when it returned -1 (bad delay, full ms list, workers=0,\n"
            "\t\t\t# ms_timer=0): nothing was suspended, the request is relayed undelayed.\n"
            "\t\t\tt_relay();\n"
            "\t\t\texit;\n"
        )

    def resume_route(self, trace: bool = False) -> str:
        runs_in = (
            '"ASYNC MOD TIMER" process (seconds ring)'
            if self.seconds_form
            else '"Async Task Worker - default" process (core pool)'
        )
        return (
            "\n"
            "# The continuation: runs as a FAILURE_ROUTE on a copy of the request, holding\n"
            f"# the reply lock, in an {runs_in}.\n"
            "# Without a relay or a TM reply here the transaction is killed with a 500.\n"
            "route[RESUME] {\n" + (trace_line("resume") if trace else "") + "\tt_relay();\n"
            "\texit;\n"
            "}\n"
        )


STRATEGY = AsyncRoute
