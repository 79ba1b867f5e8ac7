"""What the measurements mean: sweeps and capacity, the regression check and compares,
calibration of the sim against Kamailio, the tables and plots a person reads.

Works on result entries and documents only; it never computes a percentile or a ledger of
its own (`harness.measure` does) and reaches a server only through a `harness.targets`
target.
"""
