"""What is offered: load specs and their seeded call schedules, the simulated UAC and UAS
that play them, the sim's network, and benchmark suites (loads × strategies).

Everything here is identical for every strategy and every target: a seed fixes the whole
schedule. Nothing here measures or judges a run (that is `harness.measure`), starts a server
(`harness.targets`), or knows which strategy it is driving.
"""
