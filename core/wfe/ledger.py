"""The run ledger: what each input of an output root became, so that a rerun resumes.

One SQLite file per output root (``ledger.sqlite``, beside ``run.json``) records, for
every input: the fingerprint of the work (:func:`input_fingerprint`: the workflow's stages
and parameters, the files they name, the input's size and modification time, where
its outputs go, the device), its status (``running``, ``done``, ``failed``), the
process that ran it, its run.json record, and each output as it was committed. Every
change is its own transaction, so a process killed at any moment leaves the ledger as
it was after the last one.

A rerun then skips an input whose entry is ``done`` with the same fingerprint and all
of its outputs in place, runs again every other, may replace the outputs the ledger
says wfe wrote for that input (an input killed between two outputs, or one whose
workflow changed), and removes the temporary outputs of an attempt whose process died.

Several processes may share one output root (``wfe run`` started twice, or once per
machine over a shared folder): a process *claims* an input before running it, in one
transaction (:meth:`Ledger.claim`), so each input runs in one process at a time. A
running process stamps its entry every :data:`BEAT_S` seconds (:meth:`Ledger.beating`),
which tells the others, on any machine, that it is still at work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wfe.errors import WfeError
from wfe.workflow import Workflow

__all__ = ["BEAT_S", "LEDGER", "Claim", "Entry", "Ledger", "input_fingerprint",
           "workflow_fingerprint"]

log = logging.getLogger("wfe")

LEDGER = "ledger.sqlite"

#: How often a process running an input stamps its entry (seconds).
BEAT_S = 15.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    input TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    host TEXT,
    started REAL,
    record TEXT,
    beat REAL
);
CREATE TABLE IF NOT EXISTS outputs (
    input TEXT NOT NULL,
    path TEXT NOT NULL,
    stat TEXT NOT NULL,
    PRIMARY KEY (input, path)
);
"""


@dataclass(frozen=True)
class Entry:
    """What the ledger holds for one input."""

    fingerprint: str
    status: str
    pid: int | None
    host: str | None
    record: dict[str, Any]
    #: Each output committed for this input, with its size and times when it was.
    outputs: dict[Path, list[int]]
    #: When the attempt started, and its last stamp (its process's clocks).
    started: float | None = None
    beat: float | None = None

    @property
    def process(self) -> str:
        """``host:pid`` of the process that last ran this input."""
        return f"{self.host}:{self.pid}"

    def done_with(self, print_: str) -> bool:
        """Done under the fingerprint ``print_``, with every output it recorded in place."""
        return (self.status == "done" and self.fingerprint == print_
                and all(Path(p).exists() for p in self.record.get("outputs", [])))

    def replaceable(self) -> set[Path]:
        """Outputs wfe wrote for this input that nobody has changed since."""
        return {p for p, stat in self.outputs.items() if _stat(p) == stat}

    def ended_since(self, print_: str, since: float) -> bool:
        """Ran to its end (done or failed) under the fingerprint ``print_``, in an attempt
        that started at ``since`` or later (by a process sharing this run)."""
        return (self.status in ("done", "failed") and self.fingerprint == print_
                and self.started is not None and self.started >= since)

    def process_alive(self) -> bool:
        """Whether the process that last ran this input may still be running: one on
        another host (which cannot be asked), or a live process here other than this one."""
        if self.host != socket.gethostname():
            return True
        if self.pid is None or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, another user's
        return not _exited(self.pid)


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`Ledger.claim`: the entry before it, and whether this
    process now holds the input."""

    earlier: Entry | None
    granted: bool


def _read_entry(db: sqlite3.Connection, key: str) -> Entry | None:
    row = db.execute("SELECT fingerprint, status, pid, host, record, started, beat FROM inputs "
                     "WHERE input = ?", (key,)).fetchone()
    if row is None:
        return None
    outputs = {Path(p): json.loads(stat) for p, stat in db.execute(
        "SELECT path, stat FROM outputs WHERE input = ? ORDER BY path", (key,))}
    record = json.loads(row[4]) if row[4] else {}
    return Entry(row[0], row[1], row[2], row[3], record, outputs, row[5], row[6])


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited but was not yet reaped by its parent (a zombie: a process
    killed a moment ago whose parent has not waited for it still answers signals)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (not Linux), or gone since: the signal said it was there
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


class Ledger:
    """The ledger of the output root ``root``.

    A ledger that cannot be read as one (not SQLite, damaged) is moved aside with a
    warning and a new one started: every input then runs again, as on a first run.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LEDGER
        try:
            self._init()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{LEDGER}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, aside)
            log.warning("ledger %s could not be read (%s); moved to %s, every input runs again",
                        self.path, exc, aside.name)
            self._init()

    def _init(self) -> None:
        try:
            with self._db() as db:
                db.executescript(_SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(inputs)")}
                if "beat" not in columns:  # a ledger of an earlier wfe
                    db.execute("ALTER TABLE inputs ADD COLUMN beat REAL")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "unable to open" in str(exc):
                raise WfeError(f"cannot use the run ledger {self.path} ({exc})",
                               "choose an output folder you can write to (-o DIR)") from None
            raise

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction: committed when the block ends."""
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            yield db

    def entry(self, key: str) -> Entry | None:
        """What the ledger holds for the input ``key``, or None."""
        with self._db() as db:
            return _read_entry(db, key)

    def claim(self, key: str, print_: str, *, since: float = 0.0, skip_done: bool = False,
              stale: tuple[str, float | None] | None = None, take_over: bool = False) -> Claim:
        """Start the input ``key`` in this process under the fingerprint ``print_``, unless
        another process holds it or has run it to its end.

        Not granted when the entry is ``running`` in another process that may be alive
        (:meth:`Entry.process_alive`); when it ended under ``print_`` in an attempt that
        started at ``since`` or later (the start of this run: a process sharing the
        output root got there first); with ``skip_done``, when it is done under
        ``print_`` (:meth:`Entry.done_with`). ``stale``: the holder (``host:pid``) and
        stamp this process has watched stay the same for long enough to call that holder
        gone; granted if the entry still shows exactly those. ``take_over``: granted
        whatever the entry says (the caller knows its holder is gone). The test and the
        start are one transaction, so of several processes claiming at once one is granted.
        """
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            earlier = _read_entry(db, key)
            if earlier is not None and not take_over and (
                    earlier.ended_since(print_, since)
                    or (skip_done and earlier.done_with(print_))
                    or (earlier.status == "running" and earlier.process_alive()
                        and stale != (earlier.process, earlier.beat))):
                return Claim(earlier, granted=False)
            now = time.time()
            db.execute("INSERT OR REPLACE INTO inputs (input, fingerprint, status, pid, host, "
                       "started, record, beat) VALUES (?, ?, 'running', ?, ?, ?, NULL, ?)",
                       (key, print_, os.getpid(), socket.gethostname(), now, now))
        return Claim(earlier, granted=True)

    def beat(self, key: str) -> None:
        """Stamp the input ``key`` as still running, if this process holds it."""
        with self._db() as db:
            db.execute("UPDATE inputs SET beat = ? WHERE input = ? AND status = 'running' "
                       "AND pid = ? AND host = ?",
                       (time.time(), key, os.getpid(), socket.gethostname()))

    @contextmanager
    def beating(self, key: str) -> Iterator[None]:
        """Stamp the input ``key`` every :data:`BEAT_S` seconds while the block runs."""
        stop = threading.Event()

        def stamp() -> None:
            while not stop.wait(BEAT_S):
                try:
                    self.beat(key)
                except sqlite3.Error as exc:  # a busy or unreachable ledger: try again later
                    log.debug("could not stamp %s in the ledger: %s", key, exc)

        thread = threading.Thread(target=stamp, name="wfe-ledger-beat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def committed(self, key: str, path: Path) -> None:
        """An output of the input ``key`` now carries its final name at ``path`` (its size
        and times are kept, to tell later whether someone changed it)."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO outputs (input, path, stat) VALUES (?, ?, ?)",
                       (key, str(path.resolve()), json.dumps(_stat(path))))

    def finish(self, key: str, status: str, record: dict[str, Any], *,
               held: bool = True) -> None:
        """The input ``key`` ended as ``status`` (``done`` or ``failed``). With ``held``,
        only if this process still holds it: one that another run took over (its stamps
        had stopped) leaves the entry to the run that took it."""
        query = "UPDATE inputs SET status = ?, record = ? WHERE input = ?"
        params: tuple[Any, ...] = (status, json.dumps(record, default=str), key)
        if held:
            query += " AND pid = ? AND host = ?"
            params += (os.getpid(), socket.gethostname())
        with self._db() as db:
            db.execute(query, params)


def workflow_fingerprint(workflow: Workflow, device: str) -> str:
    """What every input's results depend on, once per run: the workflow's stages and
    parameters, the size and modification time of every file a parameter names (a
    model's weights and its card beside them), the device asked for."""
    stages = workflow.parameters()
    named = sorted({str(p) for node in stages for p in _named_files(node[2], workflow.directory)})
    return _digest({"stages": stages, "files": [[p, *_stat(Path(p))] for p in named],
                    "device": device})


def input_fingerprint(workflow_print: str, input_path: Path, output: Path) -> str:
    """What an input's results depend on, as far as wfe can see without reading pixels:
    the run's :func:`workflow_fingerprint`; the input's size and modification time (for
    a folder, such as a Zarr store or a MIRAX slide's data, its entries' too); its
    output folder. The content of a file is not read: a slide of several gigabytes
    would take as long to hash as to tile."""
    return _digest({"workflow": workflow_print,
                    "input": [str(input_path.resolve()), *_stat(input_path)],
                    "companion": _companion(input_path), "output": str(output.resolve())})


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _named_files(value: Any, base: Path) -> Iterator[Path]:
    """Existing files (and the model cards beside weights) that parameter values name."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _named_files(v, base)
    elif isinstance(value, list):
        for v in value:
            yield from _named_files(v, base)
    elif isinstance(value, str) and value and "{" not in value and len(value) < 4096:
        p = Path(value).expanduser()
        p = p if p.is_absolute() else base / p
        try:
            if p.is_file():
                yield p.resolve()
                card = p.with_suffix(".yaml")
                if card.is_file():
                    yield card.resolve()
        except OSError:
            return


def _stat(path: Path) -> list[int]:
    """Size and modification time (ns) of a file; for a folder, of it and each entry
    directly in it."""
    try:
        st = path.stat()
    except OSError:
        return [-1, -1]
    if not path.is_dir():
        return [st.st_size, st.st_mtime_ns]
    entries = []
    try:
        for child in sorted(os.scandir(path), key=lambda e: e.name):
            cst = child.stat()
            entries += [cst.st_size, cst.st_mtime_ns]
    except OSError:
        pass
    return [st.st_mtime_ns, *entries]


def _companion(path: Path) -> list[int]:
    """A slide's data folder beside it (MIRAX: ``slide.mrxs`` and ``slide/``)."""
    folder = path.with_suffix("")
    return _stat(folder) if folder != path and folder.is_dir() else []

