"""The live target: the sim's own core and strategies as a UDP proxy on the real clock.

`serve` is the proxy (`deferbench serve`), `udp` its sockets on either anyio backend,
`target` starts it in a child process and drives a load through it. Nothing here models
time: the clock is the machine's.
"""
