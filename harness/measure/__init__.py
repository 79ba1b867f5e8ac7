"""What a run measured: the correctness ledger, latency histograms and percentiles, CPU
figures, one result-schema entry per strategy, and the result files.

Every target hands its observations to these modules, so a percentile, a ledger outcome or
a CPU share is computed one way only. Nothing here drives load, starts a process, or
decides whether a figure is good (that is `harness.analysis`).
"""
