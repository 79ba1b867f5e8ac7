"""The kamailio target: real Kamailio 5.6 on the strategy's generated kamailio.cfg.

`process` starts and stops Kamailio by PID and reads its roles and CPU from core.psx and
/proc; `trace` reads deferral delays and timer passes from its log; `sipp` drives a load
with SIPp; `target` ties them into the `Target` and one run. Nothing here talks to anything
but 127.0.0.1, or leaves a process it started running.
"""
