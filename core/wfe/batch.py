"""Runs a workflow over many inputs; one input's failure never stops the others."""

from __future__ import annotations

import glob
import json
import logging
import os
import socket
import sqlite3
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from wfe.checkpoint import CHECKPOINT_FOLDER, Checkpoints
from wfe.errors import NoSpaceError, WfeError, is_out_of_space
from wfe.heap import fix_heap_thresholds
from wfe.ledger import BEAT_S, Claim, Entry, Ledger, input_fingerprint, workflow_fingerprint
from wfe.plugins import Registry
from wfe.progress import DaskProgress, make_progress
from wfe.report import REPORT, render_report
from wfe.runner import run_input
from wfe.sink import remove_output, temporary_outputs
from wfe.stage import InputFields
from wfe.warm_start import heap_key, remember_heap, touch_remembered_heap
from wfe.workflow import Workflow

__all__ = ["BatchResult", "InputJob", "JobResult", "expand_inputs", "log_to_file", "output_root",
           "run_batch", "run_job"]

log = logging.getLogger("wfe")

#: How often a run waiting for inputs other runs hold looks at the ledger (seconds).
POLL_S = 3.0
#: How long another run's stamp may stay unchanged before its input is taken over
#: (seconds; it stamps every ``BEAT_S``).
STALE_S = 8 * BEAT_S


@dataclass
class BatchResult:
    """Per-input records as written to run.json."""

    root: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Why the run stopped before every input had ended (a full disk), if it did.
    stopped: str | None = None

    @property
    def failed(self) -> list[str]:
        return [k for k, r in self.records.items() if r["status"] != "done"]

    @property
    def resumed(self) -> list[str]:
        """Inputs done in an earlier run and not run again."""
        return [k for k, r in self.records.items() if r.get("resumed")]

    @property
    def concurrent(self) -> list[str]:
        """Inputs another run sharing the output root ran while this one ran."""
        return [k for k, r in self.records.items() if r.get("concurrent")]


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
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _write_results(root: Path, run_json: dict[str, Any]) -> None:
    """``run.json`` and the page that shows it (``report.html``); on a full disk the
    versions already there stay (the run's console says what it could not write)."""
    try:
        _write_text(root / "run.json", json.dumps(run_json, indent=2, default=str))
        _write_text(root / REPORT, render_report(root, run_json))
    except OSError as exc:
        if not is_out_of_space(exc):
            raise
        log.warning("could not update %s: %s", root / "run.json", exc)


class _LogFile(logging.FileHandler):
    """``wfe.log``: a line that cannot be written (a full disk) is dropped, not reported
    with a traceback on the console, which says what matters."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def log_to_file(root: Path) -> logging.Handler:
    """Send wfe's log, from INFO up, to ``root/wfe.log`` too, each line marked with the
    host and process that wrote it (several runs, or a cluster's workers, may share the
    file); the handler, for removing it."""
    handler = _LogFile(root / "wfe.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s [{socket.gethostname()}:%(process)d] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _remove_left_behind(folder: Path) -> None:
    """Remove the temporary outputs a killed process left under ``folder``."""
    for path in temporary_outputs(folder):
        log.info("removing %s, left by a run that was stopped", path)
        remove_output(path)


@dataclass(frozen=True)
class InputJob:
    """One input of a batch: what running it takes besides the workflow, as the batch
    hands it to whoever runs it (this process, or a worker of a cluster)."""

    path: Path
    output: Path
    #: The input's entry in the ledger, and the fingerprint of its work.
    key: str
    fingerprint: str
    root: Path
    device: str
    workers: int | None
    #: Compute every chunk again (``--no-resume``): no chunk kept by an earlier attempt.
    fresh: bool


@dataclass
class JobResult:
    """How an input ended: its run.json record and, for a failure, its traceback."""

    record: dict[str, Any]
    trace: str | None = None
    #: Not a :class:`WfeError` (a crash): its traceback is in ``wfe.log``.
    unexpected: bool = False
    #: Why the batch stops after this input (the disk is full), if it does.
    stop: NoSpaceError | None = None


def run_job(job: InputJob, workflow: Workflow, registry: Registry, ledger: Ledger,
            callbacks: tuple[Any, ...] = (), claim: Claim | None = None) -> JobResult:
    """Run one input, recording it in ``ledger``; its failure is returned, not raised.

    ``claim``: this process's granted claim on the input (:meth:`Ledger.claim`); without
    one the input is taken over, whoever held it (a cluster's scheduler decides who runs
    what). What an earlier attempt whose process died left behind is removed first, and
    the outputs it committed (unchanged since) may be replaced.
    """
    record: dict[str, Any] = {"status": "running", "output": None, "error": None,
                              "process": f"{socket.gethostname()}:{os.getpid()}"}
    result = JobResult(record)
    t0 = time.perf_counter()
    if claim is None:
        claim = ledger.claim(job.key, job.fingerprint, take_over=True)
    log.info("start %s", job.path)
    earlier = claim.earlier
    replaceable = earlier.replaceable() if earlier is not None else set()
    if earlier is not None and earlier.status == "running":
        _remove_left_behind(job.output)  # its process is gone, or this is a takeover
    checkpoints = Checkpoints(job.output / CHECKPOINT_FOLDER, job.fingerprint)
    if job.fresh:
        checkpoints.remove()  # every chunk computed again
    try:
        record["output"] = str(job.output)
        job.output.mkdir(parents=True, exist_ok=True)
        with ledger.beating(job.key):
            summary = run_input(workflow, job.path, job.output, registry, device=job.device,
                                workers=job.workers, root=job.root, callbacks=callbacks,
                                replaceable=replaceable,
                                committed=partial(ledger.committed, job.key),
                                checkpoints=checkpoints)
        record.update(status="done", **summary)
        log.info("done %s in %.1f s", job.path, time.perf_counter() - t0)
    except WfeError as exc:
        record.update(status="failed", error=exc.line())
        result.trace = traceback.format_exc()
        log.error("failed %s: %s", job.path, exc.line())
    except Exception as exc:  # noqa: BLE001 - one input's crash is that input's failure
        if is_out_of_space(exc):
            result.stop = _no_space(job, exc)
            record.update(status="failed", error=result.stop.line())
            log.error("stopped at %s: %s", job.path, exc)
        else:
            record.update(status="failed", error=f"{job.path}: {type(exc).__name__}: {exc}")
            result.trace, result.unexpected = traceback.format_exc(), True
            log.error("failed %s\n%s", job.path, result.trace)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    try:
        ledger.finish(job.key, record["status"], record)
    except sqlite3.Error as exc:
        if not is_out_of_space(exc):
            raise
        # Left "running" under a process that will be gone: the next run takes it over.
        result.stop = result.stop or _no_space(job, exc)
    return result


_NO_SPACE_HINT = ("free space there (or write elsewhere with -o DIR), then run the same "
                  "command again: it goes on where it stopped")


def _no_space(job: InputJob, exc: BaseException) -> NoSpaceError:
    return NoSpaceError(f"{job.path}: no space left on the disk of {job.output} ({exc})",
                        _NO_SPACE_HINT)


def run_batch(workflow: Workflow, inputs: list[Path], registry: Registry, *,
              output_template: str, device: str = "auto", workers: int | None = None,
              debug: bool = False, console: Console | None = None,
              resume: bool = True, scheduler: str | None = None) -> BatchResult:
    """Run ``workflow`` on each input, recording each in ``run.json`` (and showing it in
    ``report.html``) as it finishes.

    With ``resume``, an input the output root's ledger (:mod:`wfe.ledger`) records as
    done with the same workflow, input and outputs is not run again; its record is
    carried over, marked ``resumed``; an input an earlier attempt left unfinished keeps
    the chunks that attempt finished (:mod:`wfe.checkpoint`). Either way, outputs an
    earlier run wrote for an input, unchanged since, may be replaced when it runs again.
    Other runs may share the output root: each input runs in one of them
    (:func:`_share_inputs`).

    With ``scheduler`` (a dask.distributed scheduler's address), the inputs run on that
    cluster's workers, one input per task (:mod:`wfe.cluster`).

    A full disk stops the run (every input after would fail alike): the inputs not
    started are recorded as ``not run``, and ``BatchResult.stopped`` says why.
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
        handler = log_to_file(root)
    except OSError as exc:
        raise WfeError(f"cannot write to the output folder {root} ({exc.strerror or exc})",
                       "choose a folder you can write to with -o DIR") from None
    try:
        ledger = Ledger(root)
        client = None
        if scheduler is not None:
            from wfe.cluster import connect

            client = connect(scheduler)
    except BaseException:
        log.removeHandler(handler)
        handler.close()
        raise
    key = heap_key(workflow, device, workers)
    if client is None:
        # Before the progress display's thread starts: the heap settings count for
        # threads that have not allocated yet, and the heap is touched on a thread of
        # its own.
        fix_heap_thresholds()
        touch_remembered_heap(key)
    batch = _Batch(workflow, registry, ledger, BatchResult(root=root), console, debug, key,
                   local=client is None)
    try:
        with make_progress(console) as batch.progress:
            batch.overall = batch.progress.add_task("inputs", total=len(inputs))
            try:
                jobs = batch.queue(inputs, output_template, device, workers, resume)
                if client is not None:
                    from wfe.cluster import run_on_cluster

                    try:
                        run_on_cluster(client, workflow, jobs, batch.ended)
                    finally:
                        client.close()
                else:
                    _share_inputs(jobs, ledger, began=batch.began, resume=resume,
                                  progress=batch.progress, run_here=batch.run_here,
                                  ended_elsewhere=batch.ended_elsewhere,
                                  held_elsewhere=batch.held_elsewhere)
            except (NoSpaceError, OSError, sqlite3.Error) as exc:
                if not is_out_of_space(exc):
                    raise
                batch.stop(exc if isinstance(exc, NoSpaceError) else NoSpaceError(
                    f"no space left on the disk of {root} ({exc})", _NO_SPACE_HINT))
        batch.write()
    finally:
        log.removeHandler(handler)
        handler.close()
    return batch.result


@dataclass
class _Batch:
    """One ``wfe run`` over its inputs: their records, the progress display, and what
    happens as each input ends."""

    workflow: Workflow
    registry: Registry
    ledger: Ledger
    result: BatchResult
    console: Console
    debug: bool
    #: The heap warm start's key (:mod:`wfe.warm_start`).
    heap: str
    #: Inputs run in this process (not on a cluster).
    local: bool
    progress: Any = None
    overall: Any = None
    began: float = field(default_factory=time.time)

    @property
    def root(self) -> Path:
        return self.result.root

    def write(self) -> None:
        _write_results(self.root, {"workflow": str(self.workflow.path),
                                   "name": self.workflow.name, "inputs": self.result.records})

    def queue(self, inputs: list[Path], output_template: str, device: str,
              workers: int | None, resume: bool) -> list[InputJob]:
        """The inputs to run; with ``resume``, those done by an earlier run are carried
        over instead."""
        jobs = []
        workflow_print = workflow_fingerprint(self.workflow, device)
        for path in inputs:
            out = _input_output(output_template, path)
            key = str(path.resolve())
            print_ = input_fingerprint(workflow_print, path, out)
            earlier = self.ledger.entry(key)
            if resume and earlier is not None and earlier.done_with(print_):
                self.result.records[str(path)] = {**earlier.record, "resumed": True}
                log.info("skip %s: done by an earlier run of this workflow, and "
                         "unchanged since", path)
                self.progress.advance(self.overall)
                continue
            self.result.records[str(path)] = {"status": "running" if self.local else "queued",
                                              "output": None, "error": None}
            jobs.append(InputJob(path, out, key, print_, self.root, device, workers,
                                 fresh=not resume))
        return jobs

    def ended(self, job: InputJob, outcome: JobResult, task: Any = None,
              ran_here: bool = True) -> None:
        """``job`` ended as ``outcome`` says: record it and show it; raise what stops
        the batch, if anything does."""
        record = outcome.record
        self.result.records[str(job.path)] = record
        if record["status"] == "done" and self.local and ran_here:
            remember_heap(self.heap)  # after the process's first input only
        _tell(self.console, outcome, self.root, self.debug)
        if task is not None:
            self.progress.update(task, visible=False)
        self.progress.advance(self.overall)
        self.write()
        if outcome.stop is not None:
            raise outcome.stop

    def run_here(self, job: InputJob, claim: Claim) -> None:
        task = self.progress.add_task(job.path.name, total=None)
        self.ended(job, run_job(job, self.workflow, self.registry, self.ledger,
                                callbacks=(DaskProgress(self.progress, task),), claim=claim),
                   task)

    def ended_elsewhere(self, job: InputJob, entry: Entry) -> None:
        """Another run sharing the output root ran ``job`` to its end."""
        record = {**entry.record, "process": entry.process, "concurrent": True}
        log.info("%s %s in %s, another run sharing this output root",
                 entry.status, job.path, entry.process)
        self.ended(job, JobResult(record), ran_here=False)

    def held_elsewhere(self, job: InputJob, entry: Entry) -> None:
        """Another run sharing the output root is running ``job``."""
        self.result.records[str(job.path)] = {
            "status": "running", "output": str(job.output), "error": None,
            "process": entry.process, "concurrent": True}
        self.write()

    def stop(self, why: NoSpaceError) -> None:
        """The batch stops (a full disk): inputs not started are recorded as not run."""
        self.result.stopped = why.line()
        log.error("run stopped: %s", why.line())
        for record in self.result.records.values():
            if record["status"] in ("running", "queued") and not record.get("concurrent"):
                record.update(status="not run", error="not run: the run stopped before it "
                                                      "(no space left on the disk)")


def _share_inputs(jobs: list[InputJob], ledger: Ledger, *, began: float, resume: bool,
                  progress: Any, run_here: Callable[[InputJob, Claim], None],
                  ended_elsewhere: Callable[[InputJob, Entry], None],
                  held_elsewhere: Callable[[InputJob, Entry], None]) -> None:
    """Run each of ``jobs`` that this process can claim (:meth:`Ledger.claim`), in order,
    beside any other ``wfe run`` sharing the output root; then wait for those the others
    hold, taking over any whose holder stops (its process gone, or its stamp unchanged
    for :data:`STALE_S` seconds), so that every input has ended when this returns.

    ``began``: when this run started (an input another run ended since then is that
    run's, not an earlier one's).
    """
    held: dict[str, _Held] = {}

    def settle(job: InputJob, claim: Claim) -> None:
        entry = claim.earlier
        if claim.granted:
            held.pop(job.key, None)
            run_here(job, claim)
        elif entry is not None and entry.status != "running":
            held.pop(job.key, None)
            ended_elsewhere(job, entry)
        elif entry is not None:
            mark = (entry.process, entry.beat)
            if job.key not in held:
                log.info("%s is running in %s, another run sharing this output root",
                         job.path, entry.process)
                held[job.key] = _Held(job, mark, time.monotonic())
                held_elsewhere(job, entry)
            elif held[job.key].mark != mark:
                held[job.key] = _Held(job, mark, time.monotonic())

    for job in jobs:
        settle(job, ledger.claim(job.key, job.fingerprint, since=began, skip_done=resume))
    if not held:
        return
    waiting = progress.add_task("inputs in other runs", total=None)
    while held:
        progress.update(waiting, description=f"{len(held)} inputs running in other runs")
        time.sleep(POLL_S)
        for watched in list(held.values()):
            stale = watched.mark if time.monotonic() - watched.since >= STALE_S else None
            settle(watched.job, ledger.claim(watched.job.key, watched.job.fingerprint,
                                             since=began, skip_done=resume, stale=stale))
    progress.update(waiting, visible=False)


@dataclass
class _Held:
    """An input another process holds: its holder and last stamp, and since when (this
    process's monotonic clock) they have been those."""

    job: InputJob
    mark: tuple[str, float | None]
    since: float


def _tell(console: Console, outcome: JobResult, root: Path, debug: bool) -> None:
    """Show a failed input's one line (and, with ``debug``, its traceback)."""
    error = outcome.record.get("error")
    if outcome.record["status"] == "done" or not error or outcome.stop is not None:
        return  # a reason to stop is told once, by whoever called run_batch
    hint = f" (see {root / 'wfe.log'})" if outcome.unexpected else ""
    console.print(f"[red]error:[/red] {error}{hint}", markup=True, highlight=False,
                  soft_wrap=True)
    if debug and outcome.trace:
        console.print(outcome.trace)
