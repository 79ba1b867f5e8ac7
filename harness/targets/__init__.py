"""Targets: the engines one seeded load is driven through (sim, live, kamailio).

Each target starts and observes its server its own way, and hands back one strategy entry
of the result schema (`harness.measure.results`); percentiles, ledgers and CPU shares are
computed by `harness.measure`, never by a target's own copy.
"""
