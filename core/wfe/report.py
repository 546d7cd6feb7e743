"""``report.html``: a run's inputs at a glance, in a browser, beside ``run.json``.

One page per output root: how many inputs are done, failed or carried over from an
earlier run; then each input with its status, time, error line, outputs (linked) and
the pictures its writers made (overlays, masks), so that a night's archive run can be
checked by looking rather than reading. Rewritten each time ``run.json`` is.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["REPORT", "render_report"]

REPORT = "report.html"

#: Outputs shown as pictures.
_PICTURES = (".png", ".jpg", ".jpeg")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
td, th { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: left;
         vertical-align: top; }
.done { color: #1a7f37; } .failed { color: #cf222e; } .running { color: #9a6700; }
.error { font-family: monospace; white-space: pre-wrap; max-width: 60em; }
img { max-width: 320px; max-height: 320px; margin: 0.2em; border: 1px solid #ccc; }
"""


def _link(target: str, root: Path) -> str:
    """``target`` (absolute, or relative to where wfe runs, as run.json has it) relative
    to ``root``, so that the page's links hold wherever the folder is moved or served."""
    path = Path(target)
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        return Path(os.path.relpath(absolute.resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return absolute.as_posix()


def _row(name: str, record: dict[str, Any], root: Path) -> str:
    status = record.get("status", "?")
    label = (f"{status} (earlier run)" if record.get("resumed")
             else f"{status} (in {record['process']})" if record.get("concurrent") else status)
    seconds = record.get("seconds")
    outputs = [(o, escape(_link(o, root)), escape(Path(o).name))
               for o in record.get("outputs") or []]
    links = "<br>".join(f'<a href="{href}">{name}</a>' for _, href, name in outputs)
    pictures = "".join(f'<a href="{href}"><img src="{href}" alt="{name}"></a>'
                       for o, href, name in outputs if o.lower().endswith(_PICTURES))
    error = record.get("error")
    return ("<tr>"
            f"<td>{escape(Path(name).name)}<br><small>{escape(name)}</small></td>"
            f'<td class="{escape(status)}">{escape(label)}</td>'
            f"<td>{'' if seconds is None else f'{seconds:.1f} s'}</td>"
            f"<td>{links}</td><td>{pictures}</td>"
            f'<td class="error">{escape(error) if error else ""}</td>'
            "</tr>")


def render_report(root: Path, run: dict[str, Any]) -> str:
    """The page ``report.html`` in ``root`` shows for ``run`` (what ``run.json`` holds)."""
    inputs: dict[str, dict[str, Any]] = run.get("inputs", {})
    done = sum(r.get("status") == "done" for r in inputs.values())
    failed = sum(r.get("status") == "failed" for r in inputs.values())
    resumed = sum(bool(r.get("resumed")) for r in inputs.values())
    title = f"wfe: {run.get('name') or Path(run.get('workflow', '')).stem}"
    rows = "\n".join(_row(name, record, root) for name, record in inputs.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<p>Workflow <code>{escape(str(run.get('workflow', '')))}</code>:
{len(inputs)} inputs, <span class="done">{done} done</span>{
f' ({resumed} by an earlier run)' if resumed else ''},
<span class="failed">{failed} failed</span>.
Details in <a href="run.json">run.json</a> and <a href="wfe.log">wfe.log</a>.</p>
<table>
<tr><th>input</th><th>status</th><th>time</th><th>outputs</th><th>pictures</th><th>error</th></tr>
{rows}
</table>
</body></html>
"""
