"""deferbench's harness: loads, endpoints, targets, measurement, results and the CLI."""

from pathlib import Path

import core  # noqa: F401  # first: it picks compiled modules or their sources

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout deferbench runs from (an editable install): where `serve` is started and
the adopted calibration lives."""
