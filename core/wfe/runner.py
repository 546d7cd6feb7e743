"""Runs a validated workflow on one input: builds the lazy graph, then computes its sinks."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import dask
import dask.threaded

from wfe.checkpoint import Checkpoints
from wfe.errors import WfeError
from wfe.heap import fix_heap_thresholds
from wfe.plugins import Registry
from wfe.stage import StageContext
from wfe.workflow import Workflow

__all__ = ["run_input"]

log = logging.getLogger("wfe")


def _abort(sinks: list[Any]) -> None:
    """Remove every sink's partial output; one failing clean-up does not stop the others."""
    for sink in sinks:
        try:
            sink.abort()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("could not remove the partial output of %s", sink.path)


def _build(workflow: Workflow, input_path: Path, ctx: StageContext,
           timings: dict[str, float]) -> None:
    """Run every stage's build in order (lazy artifacts, sinks added to ``ctx``),
    recording each one's time; on failure, remove the outputs already started."""
    artifacts: dict[tuple[str, str], Any] = {}
    read = {ref for node in workflow.stages for ref in node.refs.values()}
    for node in workflow.stages:
        ctx.stage_id = node.id
        ctx.used = frozenset(name for stage, name in read if stage == node.id)
        inputs = {name: artifacts[ref] for name, ref in node.refs.items()}
        t = time.perf_counter()
        try:
            outputs = node.build().run(ctx, **inputs)
        except BaseException as exc:
            # A stage may compute something small (a mask) while building; outputs that
            # earlier stages already started must not be left behind.
            _abort(ctx.sinks)
            if isinstance(exc, WfeError) and not exc.message.startswith(("stage ",
                                                                          str(input_path))):
                exc.message = f"stage {node.id}: {exc.message}"
            raise
        timings[f"build:{node.id}"] = round(time.perf_counter() - t, 4)
        for name, value in (outputs or {}).items():
            artifacts[(node.id, name)] = value


def run_input(workflow: Workflow, input_path: Path, output: Path, registry: Registry, *,
              device: str = "auto", workers: int | None = None, root: Path | None = None,
              callbacks: tuple[Any, ...] = (), replaceable: Collection[Path] = (),
              committed: Callable[[Path], None] | None = None,
              checkpoints: Checkpoints | None = None) -> dict[str, Any]:
    """Run every stage for ``input_path``; return what run.json records for it.

    Stages only build lazy artifacts; the pixels are computed once, by one
    ``dask.compute`` over all the sinks, so shared upstream work (e.g. a
    segmentation written both as labels and as an overlay) runs once.

    ``replaceable``: existing outputs the writers may replace without ``overwrite``
    (what an earlier run of this input wrote: :mod:`wfe.ledger`). ``committed`` is
    told each output as it takes its final name. ``checkpoints``: where stages keep the
    chunks they finish (:mod:`wfe.checkpoint`), removed once the input is done; an attempt
    that fails or is killed leaves them for the next.
    """
    fix_heap_thresholds()
    ctx = StageContext(input=input_path, output=output, workflow_dir=workflow.directory,
                       registry=registry, device=device,
                       root=root, replaceable=frozenset(p.resolve() for p in replaceable),
                       checkpoints=checkpoints)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # No distributed client is looked for (importing distributed: 70 ms a process).
    # Rechunks are planned as tasks: the graph runs on the engine's own thread pool,
    # where a peer-to-peer plan (dask's choice when a client exists) could not run.
    # What a stage computes while building (a mask from a thumbnail) runs on dask's
    # threaded scheduler, named by its function.
    with dask.config.set({"array.rechunk.method": "tasks", "scheduler": dask.threaded.get}):
        _build(workflow, input_path, ctx, timings)
    ctx.stage_id = ""
    ctx.used = None
    work = [w for sink in ctx.sinks for w in sink.work]
    t = time.perf_counter()
    # A pool of our own, so that after a failure we can wait for the chunks still
    # being written before removing the partial outputs they write into.
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    try:
        with ExitStack() as stack:
            # dask's threaded scheduler on that pool, given as the function itself:
            # named ("threads"), dask imports distributed to look for a client first.
            stack.enter_context(dask.config.set(scheduler=partial(dask.threaded.get,
                                                                  pool=pool)))
            for callback in callbacks:
                stack.enter_context(callback)
            # One graph, unoptimised: optimising arrays and delayed values separately
            # renames shared keys, and shared work (the segmentation under both the
            # labels and the overlay) would then run twice.
            dask.compute(*work, optimize_graph=False)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        _abort(ctx.sinks)
        raise
    finally:
        pool.shutdown(wait=True)
    timings["compute"] = round(time.perf_counter() - t, 4)
    for sink in ctx.sinks:
        sink.finalize()
        if committed is not None:
            committed(sink.path)
        if sink.summary:
            ctx.info.setdefault(sink.stage, {}).update(sink.summary)
    if checkpoints is not None:
        checkpoints.remove()
    timings["total"] = round(time.perf_counter() - t0, 4)
    return {"outputs": [str(s.path) for s in ctx.sinks], "timings": timings, "info": ctx.info}
