"""Which cost profile the sim charges: the one the user names, else the adopted calibration.

`deferbench calibrate --adopt` copies its fitted profile to `ADOPTED`
(results/calibration/profile.toml, committed with the project), and from then on every sim
run uses it unless `--costs FILE` names another, or `--costs built-in` asks for the
hand-derived defaults of `core.runtime.costs`. Results record the source, so a figure can
always be traced to the profile that produced it.

What this module must not do: fit anything, or silently fall back when a named file is bad.
"""

from __future__ import annotations

from core.runtime.costs import CostProfile
from harness import PROJECT_ROOT

ADOPTED = PROJECT_ROOT / "results" / "calibration" / "profile.toml"
BUILT_IN = "built-in"


def sim_profile(name: str | None) -> tuple[CostProfile, str]:
    """(profile, its source as results record it) for `--costs name` (None: not given)."""
    if name == BUILT_IN:
        return CostProfile(), BUILT_IN
    if name:
        return CostProfile.load(name), name
    if ADOPTED.is_file():
        return CostProfile.load(ADOPTED), str(ADOPTED.relative_to(PROJECT_ROOT))
    return CostProfile(), BUILT_IN
