"""What several benchmarks share: the mask-off workflow and the CPU's name."""

from __future__ import annotations

import platform
from pathlib import Path

#: read at 1 µm → segment with ``{model}`` (no mask) → labels as OME-Zarr.
NO_MASK = """
wfe: 1
stages:
  - {{id: image, uses: read, with: {{mpp: 1.0}}}}
  - id: seg
    uses: segment
    with: {{image: image, model: {model}, overlap: 64}}
  - {{id: labels, uses: write, with: {{data: seg.labels, path: "{{output}}/labels.ome.zarr"}}}}
"""


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
