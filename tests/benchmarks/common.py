"""What several benchmarks share: the mask-off workflow."""

from __future__ import annotations

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
