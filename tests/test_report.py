"""``report.html``: every input of a run with its status, error, outputs and pictures."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from conftest import run_cli
from wfe_builtin.synthetic import SyntheticSlide, write_slide

pytestmark = pytest.mark.slow

WORKFLOW = """
wfe: 1
name: look
stages:
  - {id: image, uses: read, with: {mpp: 2.0}}
  - {id: tissue, uses: tissue_mask, with: {image: image, mpp: 8}}
  - {id: mask, uses: write, with: {data: tissue, path: "{output}/tissue.ome.zarr"}}
  - {id: overlay, uses: write, with: {data: tissue, background: image, path: "{output}/tissue.png"}}
"""


class _Page(HTMLParser):
    """The rows' cells (text), links and pictures of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self.pictures: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.append(values["href"] or "")
        elif tag == "img":
            self.pictures.append(values["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_the_report_shows_each_input_its_pictures_and_its_error(tmp_path):
    slide = write_slide(SyntheticSlide(1024, 1024, mpp=0.5, seed=4), tmp_path / "good.tiff")
    bad = tmp_path / "bad <1>.tiff"
    bad.write_text("not a slide")
    workflow = tmp_path / "look.yaml"
    workflow.write_text(WORKFLOW)
    # Outputs recorded relative to where wfe runs: the page's links must still hold.
    result = run_cli("run", workflow, "-i", slide, "-i", bad, "-o", "out", cwd=tmp_path)
    assert result.code == 1
    root = tmp_path / "out"
    page = _Page()
    page.feed((root / "report.html").read_text(encoding="utf-8"))
    header, *rows = page.rows
    assert header[:3] == ["input", "status", "time"]
    by_name = {row[0].split("/")[0]: row for row in rows}
    assert by_name.keys() == {"good.tiff", "bad <1>.tiff"}
    assert by_name["good.tiff"][1] == "done" and by_name["good.tiff"][-1] == ""
    assert by_name["bad <1>.tiff"][1] == "failed"
    assert "not an image" in by_name["bad <1>.tiff"][-1]
    assert page.pictures == ["good/tissue.png"]
    for link in page.links:
        assert (root / link).exists(), link
    # A rerun carries the good input over from the first: the page says so.
    result = run_cli("run", workflow, "-i", slide, "-i", bad, "-o", "out", cwd=tmp_path)
    page = _Page()
    page.feed((root / "report.html").read_text(encoding="utf-8"))
    assert [row[1] for row in page.rows[1:]] == ["done (earlier run)", "failed"]
    assert not list(root.glob(".*partial"))
