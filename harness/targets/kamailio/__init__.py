"""The kamailio target: real Kamailio 5.6 on the strategy's generated kamailio.cfg.

`target` starts Kamailio and reads its log and /proc; `sipp` drives the load with SIPp.
Nothing here talks to anything but 127.0.0.1, or leaves a process it started running.
"""
