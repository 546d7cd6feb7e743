"""Runs a workflow over many inputs; one input's failure never stops the others."""

from __future__ import annotations

import glob
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from wfe.checkpoint import CHECKPOINT_FOLDER, Checkpoints
from wfe.errors import WfeError
from wfe.heap import fix_heap_thresholds
from wfe.ledger import Ledger, input_fingerprint, workflow_fingerprint
from wfe.plugins import Registry
from wfe.progress import DaskProgress, make_progress
from wfe.report import REPORT, render_report
from wfe.runner import run_input
from wfe.sink import remove_output, temporary_outputs
from wfe.stage import InputFields
from wfe.warm_start import heap_key, remember_heap, touch_remembered_heap
from wfe.workflow import Workflow

__all__ = ["BatchResult", "expand_inputs", "output_root", "run_batch"]

log = logging.getLogger("wfe")


@dataclass
class BatchResult:
    """Per-input records as written to run.json."""

    root: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [k for k, r in self.records.items() if r["status"] != "done"]

    @property
    def resumed(self) -> list[str]:
        """Inputs done in an earlier run and not run again."""
        return [k for k, r in self.records.items() if r.get("resumed")]


def expand_inputs(patterns: list[str], base: Path) -> list[Path]:
    """Paths and globs -> input paths, in order, without duplicates.

    A pattern with no glob characters is kept even when it does not exist, so
    a missing file is reported as that input's failure rather than dropped.
    """
    out: list[Path] = []
    for pattern in patterns:
        p = Path(pattern).expanduser()
        p = p if p.is_absolute() else base / p
        if glob.has_magic(str(p)):
            out.extend(Path(m) for m in sorted(glob.glob(str(p), recursive=True)))
        else:
            out.append(p)
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def output_root(template: str) -> Path:
    """The fixed part of an output template: where run.json and wfe.log go."""
    if "{" not in template:
        return Path(template)
    head = template.split("{", 1)[0]
    return Path(head) if head.endswith(("/", os.sep)) else Path(head).parent


def _input_output(template: str, path: Path) -> Path:
    if "{" not in template:
        template = os.path.join(template, "{input.stem}")
    return Path(template.format(input=InputFields(path)))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_results(root: Path, run_json: dict[str, Any]) -> None:
    """``run.json`` and the page that shows it (``report.html``)."""
    _write_text(root / "run.json", json.dumps(run_json, indent=2, default=str))
    _write_text(root / REPORT, render_report(root, run_json))


def _remove_left_behind(folder: Path) -> None:
    """Remove the temporary outputs a killed process left under ``folder``."""
    for path in temporary_outputs(folder):
        log.info("removing %s, left by a run that was stopped", path)
        remove_output(path)


def run_batch(workflow: Workflow, inputs: list[Path], registry: Registry, *,
              output_template: str, device: str = "auto", workers: int | None = None,
              debug: bool = False, console: Console | None = None,
              resume: bool = True) -> BatchResult:
    """Run ``workflow`` on each input, recording each in ``run.json`` (and showing it in
    ``report.html``) as it finishes.

    With ``resume``, an input the output root's ledger (:mod:`wfe.ledger`) records as
    done with the same workflow, input and outputs is not run again; its record is
    carried over, marked ``resumed``; an input an earlier attempt left unfinished keeps
    the chunks that attempt finished (:mod:`wfe.checkpoint`). Either way, outputs an
    earlier run wrote for an input, unchanged since, may be replaced when it runs again.
    """
    console = console or Console(stderr=True)
    try:
        _input_output(output_template, Path("slide.tiff"))
    except (KeyError, AttributeError, IndexError, ValueError) as exc:
        raise WfeError(f"output {output_template!r} names an unknown field ({exc})",
                       "use {input.stem} or {input.name} in output:") from None
    root = output_root(output_template)
    try:
        root.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(root / "wfe.log", encoding="utf-8")
    except OSError as exc:
        raise WfeError(f"cannot write to the output folder {root} ({exc.strerror or exc})",
                       "choose a folder you can write to with -o DIR") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        ledger = Ledger(root)
    except BaseException:
        log.removeHandler(handler)
        handler.close()
        raise
    # Before the progress display's thread starts: the heap settings count for threads
    # that have not allocated yet, and the heap is touched on a thread of its own.
    fix_heap_thresholds()
    key = heap_key(workflow, device, workers)
    touch_remembered_heap(key)
    result = BatchResult(root=root)
    workflow_print = workflow_fingerprint(workflow, device)
    unwritten = False  # records carried over since run.json was last written
    run_json = {"workflow": str(workflow.path), "name": workflow.name, "inputs": result.records}
    try:
        with make_progress(console) as progress:
            overall = progress.add_task("inputs", total=len(inputs))
            for path in inputs:
                out = _input_output(output_template, path)
                entry_key = str(path.resolve())
                print_ = input_fingerprint(workflow_print, path, out)
                earlier = ledger.entry(entry_key)
                if resume and earlier is not None and earlier.done_with(print_):
                    result.records[str(path)] = {**earlier.record, "resumed": True}
                    log.info("skip %s: done by an earlier run of this workflow, and "
                             "unchanged since", path)
                    progress.advance(overall)
                    unwritten = True  # written with the next input that runs, or at the end
                    continue
                record: dict[str, Any] = {"status": "running", "output": None, "error": None}
                result.records[str(path)] = record
                t0 = time.perf_counter()
                log.info("start %s", path)
                task = progress.add_task(path.name, total=None)
                replaceable = earlier.replaceable() if earlier is not None else set()
                if (earlier is not None and earlier.status == "running"
                        and not earlier.process_alive()):
                    _remove_left_behind(out)
                ledger.start(entry_key, print_)
                checkpoints = Checkpoints(out / CHECKPOINT_FOLDER, print_)
                if not resume:
                    checkpoints.remove()  # every chunk computed again
                try:
                    record["output"] = str(out)
                    out.mkdir(parents=True, exist_ok=True)
                    summary = run_input(workflow, path, out, registry, device=device,
                                        workers=workers, root=root,
                                        callbacks=(DaskProgress(progress, task),),
                                        replaceable=replaceable,
                                        committed=partial(ledger.committed, entry_key),
                                        checkpoints=checkpoints)
                    record.update(status="done", **summary)
                    remember_heap(key)  # after the process's first input only
                    log.info("done %s in %.1f s", path, time.perf_counter() - t0)
                except WfeError as exc:
                    record.update(status="failed", error=exc.line())
                    log.error("failed %s: %s", path, exc.line())
                    console.print(f"[red]error:[/red] {exc.line()}", markup=True, highlight=False,
                                  soft_wrap=True)
                    if debug:
                        console.print(traceback.format_exc())
                except Exception as exc:  # noqa: BLE001 - one input's crash is that input's failure
                    line = f"{path}: {type(exc).__name__}: {exc}"
                    record.update(status="failed", error=line)
                    log.error("failed %s\n%s", path, traceback.format_exc())
                    console.print(f"[red]error:[/red] {line} (see {root / 'wfe.log'})",
                                  markup=True, highlight=False, soft_wrap=True)
                    if debug:
                        console.print(traceback.format_exc())
                record["seconds"] = round(time.perf_counter() - t0, 3)
                ledger.finish(entry_key, record["status"], record)
                progress.update(task, visible=False)
                progress.advance(overall)
                _write_results(root, run_json)
                unwritten = False
        if unwritten:
            _write_results(root, run_json)
    finally:
        log.removeHandler(handler)
        handler.close()
    return result
