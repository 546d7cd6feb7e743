"""A process that imported torch ends without tearing its libraries down, so that its
peak memory is its work's, not its exit's (wfe.cli)."""

from __future__ import annotations

import os
import subprocess
import sys

# Imported by the measured `wfe` process at start-up: torch, as a run loads it, and a
# handler that notes the process's peak RSS once the exit handlers run (the last of
# them, registered first). The -S of the measuring parent keeps it out of the parent.
SITECUSTOMIZE = """
import atexit, os, sys
import torch

def _note_peak():
    if "wfe" in sys.modules:
        with open(os.environ["PEAK_AT_EXIT"], "w") as f:
            f.write(next(line.split()[1] for line in open("/proc/self/status")
                         if line.startswith("VmHWM")))

atexit.register(_note_peak)
"""

MEASURE = """
import os, subprocess, sys
with open(sys.argv[1], "w") as out:
    proc = subprocess.Popen(sys.argv[2:], stdout=out)
    _, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def test_a_process_that_imported_torch_ends_without_growing(tmp_path):
    # A CUDA build of torch loads its CUDA libraries on a CPU too; torn down at exit,
    # they faulted in 130 MiB more than the process had ever held.
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PEAK_AT_EXIT": str(tmp_path / "peak")}
    measured = subprocess.run([sys.executable, "-S", "-c", MEASURE, str(tmp_path / "out"),
                               sys.executable, "-m", "wfe", "--help"],
                              env=env, capture_output=True, text=True, check=True)
    peak_kib, code = map(int, measured.stdout.split())
    at_exit_kib = int((tmp_path / "peak").read_text())
    assert code == 0
    assert "Usage" in (tmp_path / "out").read_text()  # written out before the process ended
    assert peak_kib - at_exit_kib < 8 * 1024, (peak_kib, at_exit_kib)
