"""`async-sleep`: Kamailio's `async_ms_sleep(ms)` (or `async_sleep(s)` with `s=`).

Direct sleep-resume: the script continues with the action right after the call, when the
async module's timer finds the item due. The timing, the processes and every failure are
those of `async-route` (same ms list / seconds ring, same timers, same core pool), so the
model shares all of `strategies.async_module` and charges the same continuation
(t_continue + t_relay()).

The behavioural difference lives in kamailio.cfg, not in the timing: the continuation is
*only the rest of the current action block* (the actions after the call in the same `{}`),
never the enclosing blocks or the caller's route; calling it as the last action of a block
returns -1. Anything the request still needs after the sleep must be written right after
the call, in the same block.
"""

from __future__ import annotations

from strategies.async_module import AsyncModuleStrategy
from strategies.inline import trace_line


class AsyncSleep(AsyncModuleStrategy):
    """async_ms_sleep(ms) / async_sleep(s): continue with the next action of the block."""

    name = "async-sleep"
    summary = (
        "async module: async_ms_sleep(ms) (or async_sleep(s) with s=), the script continues "
        "after the call; timing as async-route"
    )

    def call_name(self) -> str:
        return "async_sleep" if self.seconds_form else "async_ms_sleep"

    def deferral_block(self, trace: bool = False) -> str:
        runs_in = (
            '"ASYNC MOD TIMER" process'
            if self.seconds_form
            else '"Async Task Worker - default" process'
        )
        return (
            (trace_line("suspend", "\t\t\t") if trace else "")
            + "\t\t\t# Suspends the transaction (100 Trying at once) and exits the script.\n"
            f"\t\t\t# Later the REST OF THIS BLOCK ONLY (the t_relay(); exit; below) runs as\n"
            f"\t\t\t# the continuation, in an {runs_in}; nothing after\n"
            "\t\t\t# this block's closing brace is run. On -1 (bad delay, full ms list,\n"
            "\t\t\t# workers=0, ms_timer=0) the same lines relay it at once, undelayed.\n"
            f'\t\t\t{self.call_name()}("{self.delay_argument}");\n'
            + (trace_line("resume", "\t\t\t") if trace else "")
            + "\t\t\tt_relay();\n"
            "\t\t\texit;\n"
        )


STRATEGY = AsyncSleep
