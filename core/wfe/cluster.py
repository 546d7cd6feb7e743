"""Runs a batch's inputs on a dask.distributed cluster (``wfe run --scheduler ADDRESS``).

Each input is one task of the cluster: a worker runs the whole input, with the engine's
own threaded scheduler over the cores its machine gives it, and keeps its model loaded
for the next input it is given. So the graph of an input never leaves its process (its
read gate and model are process-local, and a chunk's pixels never cross the network),
and what the cluster spreads is the archive: one input per worker at a time. The
workers read the inputs and write the outputs themselves, so every path must mean the
same file on every machine (a shared file system); they record each input in the
output root's ledger and log to its ``wfe.log``, as a local run does. This process
connects, hands out the inputs, and writes ``run.json`` as they finish.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from wfe.cores import available_cores
from wfe.errors import WfeError
from wfe.workflow import Workflow

__all__ = ["connect", "run_on_cluster"]

log = logging.getLogger("wfe")

#: How long to wait for the scheduler to answer before saying it cannot be reached.
CONNECT_TIMEOUT_S = 10

_log_files: dict[Path, tuple[logging.Handler, int]] = {}  # root -> (handler, users)
_log_lock = threading.Lock()


def connect(address: str) -> Any:
    """A ``distributed.Client`` connected to the scheduler at ``address``."""
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise WfeError(f"--scheduler {address}: cannot reach a dask scheduler there ({exc})",
                       "start one with `dask scheduler` and workers with `dask worker "
                       "ADDRESS`, or leave out --scheduler to run here") from None


def run_on_cluster(client: Any, workflow: Workflow, jobs: Iterable[Any],
                   on_done: Callable[[Any, Any], None]) -> None:
    """Run each of ``jobs`` (:class:`wfe.batch.InputJob`) on a worker of ``client``'s
    cluster; call ``on_done(job, outcome)`` here as each ends, in the order they end.

    A job whose worker died under it is retried on another worker, as the scheduler's
    ``allowed-failures`` says; past that it is that input's failure.
    """
    from distributed import as_completed

    from wfe.batch import JobResult
    from wfe.ledger import Ledger

    # Paths as every machine sees them (relative ones are this process's).
    workflow = replace(workflow, path=workflow.path.absolute())
    futures = {}
    for job in jobs:
        sent = replace(job, path=job.path.absolute(), output=job.output.absolute(),
                       root=job.root.absolute())
        key = f"wfe-input-{job.path.name}-{uuid.uuid4().hex[:8]}"
        futures[client.submit(_run_remote, sent, workflow, pure=False, key=key)] = job
    try:
        for future in as_completed(futures, loop=client.loop):
            job = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - its workers died, or it could not be sent
                line = (f"{job.path}: the cluster could not run it ({type(exc).__name__}: "
                        f"{exc})")
                outcome = JobResult({"status": "failed", "output": str(job.output),
                                     "error": line}, unexpected=True)
                log.error("failed %s: %s", job.path, line)
                Ledger(job.root).finish(job.key, "failed", outcome.record, held=False)
            on_done(job, outcome)
    finally:
        unfinished = [f for f in futures if not f.done()]
        if unfinished:  # stopped here (Ctrl-C): the cluster stops them too
            client.cancel(unfinished)


def _run_remote(job: Any, workflow: Workflow) -> Any:
    """On a worker: run one input, logging to its output root's ``wfe.log``."""
    from wfe.batch import run_job
    from wfe.ledger import Ledger
    from wfe.plugins import get_registry

    threads = _threads_per_input()
    if job.workers is None:
        job = replace(job, workers=threads)
    with _logging_to(job.root):
        return run_job(job, workflow, get_registry(), Ledger(job.root))


def _threads_per_input() -> int:
    """The threads one input gets on this worker: its machine's cores shared among the
    worker's threads (one input per thread).

    dask's nanny starts a worker with ``OMP_NUM_THREADS=1`` and the like
    (``distributed.nanny.pre-spawn-environ``), for workers whose threads each run small
    tasks; here one task is a whole input, which would then run its model on one core.
    Those values, where they are still dask's, are raised to this share before the first
    input imports the model's libraries (which read them once, when imported).
    """
    import dask
    from distributed import get_worker

    threads = max(1, available_cores() // max(1, get_worker().state.nthreads))
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    for name, value in environ.items():
        if name.endswith("_NUM_THREADS") and os.environ.get(name) == str(value):
            os.environ[name] = str(threads)
    return threads


@contextmanager
def _logging_to(root: Path) -> Iterator[None]:
    """Have this worker process log to ``root/wfe.log`` while the block runs (one handler
    per root, however many of its inputs the worker runs at once)."""
    with _log_lock:
        if root not in _log_files:
            from wfe.batch import log_to_file

            _log_files[root] = (log_to_file(root), 0)
        handler, users = _log_files[root]
        _log_files[root] = (handler, users + 1)
    try:
        yield
    finally:
        with _log_lock:
            handler, users = _log_files.pop(root)
            if users > 1:
                _log_files[root] = (handler, users - 1)
            else:
                log.removeHandler(handler)
                handler.close()
