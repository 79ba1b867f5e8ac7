"""Targets: the engines one seeded load is driven through (sim, live, kamailio).

Each target starts and observes its server its own way, and hands back one strategy entry
of the result schema (`harness.results`); percentiles, ledgers and CPU shares are computed
by the shared harness modules, never by a target's own copy.
"""
