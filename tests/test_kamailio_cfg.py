"""Every strategy's generated kamailio.cfg is accepted by the real Kamailio (`kamailio -c`).

CI installs Kamailio (.ci/run), so there this never skips.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from strategies import parse_spec

SPECS = [
    "inline",
    "blocking-sleep:ms=10",
    "mqueue-rtimer",
    "mqueue-rtimer:take=all,size=3,addmode=1,min_age=10ms",
    "async-route",
    "async-route:s=1,workers=2",
    "async-sleep",
    "async-sleep:ms=10,async_nonblock=1",
    "async-task",
    "async-task:nonblock=1,usleep=10",
]


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed")
@pytest.mark.parametrize("spec", SPECS)
def test_cfg_is_accepted_by_kamailio(tmp_path, spec):
    path = tmp_path / "kamailio.cfg"
    path.write_text(parse_spec(spec).kamailio_config())
    check = subprocess.run(
        ["kamailio", "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr[-2000:]
