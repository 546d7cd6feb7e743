"""Lazy sliding-window inference over a dask array, stitched seam-free.

Each window of the global grid (:mod:`wfe.grid`) is owned by the output chunk
its start falls in, so it is computed exactly once. A chunk's task reads the
region its own windows cover, predicts them in batches and accumulates
``prediction × weight`` and ``weight``; it adds the strips that the windows of
the chunks to its left and above spilled into it. Chunks are finished in that
wavefront order, so what waits in memory is those strips (about ``overlap``
pixels wide, along the frontier), never whole accumulations. Dividing the sums
gives the blended prediction; the most probable class needs no division. The
result is independent of the chunk size (up to float rounding) and equals an
in-memory sliding-window pass.

Each chunk's region of the image is read by a task of its own, a root of the
graph. Dask's threaded scheduler runs the most recently readied task first and
takes a root only when nothing else is ready, so with a fast model the finished
chunks are written before the next region is read (nothing piles up waiting for
the writers). With a slow model, though, free workers would take root after root
and decode the whole image ahead of it; so a read waits, while a chunk of the same
pass is being computed, until no region read earlier is still waiting for its
chunk (:class:`_ReadGate`): the next region is read while the model runs on the
current one, and no further ahead. It waits only on a running task, which
always ends, so it never deadlocks, whatever the number of workers. For the same
reason the gate gives the model to one chunk of a pass at a time (the next starts once
the one before has handed over its last batch): the model takes one batch at a time,
and a second chunk under way would only hold its sums beside the first's.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import product
from operator import getitem
from typing import Any

import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph
from dask.local import get_sync
from dask.threaded import get as get_threaded

from wfe.block_cache import SharedBlocks
from wfe.cores import available_cores
from wfe.grid import WindowGrid, blend_weights

__all__ = ["Accumulate", "blend_block", "blended", "chunk_edges", "read_region", "sliding_window_map",
           "sliding_window_sums"]

Predict = Callable[[np.ndarray], np.ndarray]
# (region, window starts, region origin, weights, batch size, submitted) -> the region's sums
Accumulate = Callable[[np.ndarray, list[tuple[int, int]], tuple[int, int], np.ndarray, int,
                       Callable[[], None]], np.ndarray]
After = Callable[[int, int], list[tuple[int, ...]]]  # chunk (i, j) -> another array's blocks
Box = tuple[int, int, int, int]  # y0, y1, x0, x1
Part = tuple[np.ndarray, tuple[int, int]]  # (Σ p·w per channel, Σ w) stacked, origin (y, x)


def _accumulate(region: np.ndarray, starts: list[tuple[int, int]], origin: tuple[int, int],
                predict: Predict, window: int, weights: np.ndarray, out_channels: int,
                batch_size: int, submitted: Callable[[], None] = lambda: None) -> Part:
    """Predict the windows in ``region`` and return their sums at ``origin``: Σ p·w for
    each channel, then Σ w, as one ``(out_channels + 1, h, w)`` array.

    Two batches are in flight: while the model runs on one, the next is cut out and
    handed to ``predict`` (which may queue it), and the one before is added in, in
    order (so the sums are the same as one batch after the other). ``submitted`` is
    called once the last batch has been handed to ``predict``: from then on the next
    chunk's first batch can wait behind it. The sums are zeroed once the first batch
    has been handed over, so the model does not wait for that.
    """
    h, w = region.shape[1:]
    oy, ox = origin
    weighted = np.empty((out_channels, window, window), np.float32)  # reused: no temporaries
    sums = np.empty((out_channels + 1, h, w), np.float32)
    num, den = sums[:out_channels], sums[out_channels]

    def run(batch_starts: list[tuple[int, int]]) -> np.ndarray:
        batch = np.stack([region[:, y - oy:y - oy + window, x - ox:x - ox + window]
                          for y, x in batch_starts])
        preds = np.asarray(predict(batch), dtype=np.float32)
        if preds.shape != (len(batch_starts), out_channels, window, window):
            raise ValueError(f"predict returned shape {preds.shape}, expected "
                             f"{(len(batch_starts), out_channels, window, window)}")
        return preds

    def add(batch_starts: list[tuple[int, int]], preds: np.ndarray) -> None:
        for (y, x), p in zip(batch_starts, preds, strict=True):
            ys, xs = slice(y - oy, y - oy + window), slice(x - ox, x - ox + window)
            num[:, ys, xs] += np.multiply(p, weights, out=weighted)
            den[ys, xs] += weights

    batches = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
    if len(batches) == 1:
        preds = run(batches[0])
        submitted()
        sums.fill(0)
        add(batches[0], preds)
        return sums, origin
    with ThreadPoolExecutor(2, thread_name_prefix="wfe-batch") as pool:
        pending: deque[tuple[list[tuple[int, int]], Future[np.ndarray]]] = deque()
        try:
            for n, batch_starts in enumerate(batches):
                pending.append((batch_starts, pool.submit(run, batch_starts)))
                if n == 0:
                    sums.fill(0)
                if len(pending) == 2:
                    done, preds = pending.popleft()
                    add(done, preds.result())
            submitted()
            while pending:
                done, preds = pending.popleft()
                add(done, preds.result())
        finally:
            for _, future in pending:
                future.cancel()
    return sums, origin


def _overlap(box: Box, origin: tuple[int, int],
             shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where an array at ``origin`` of ``shape`` meets ``box``: (its slices, the box's slices)."""
    y0, y1, x0, x1 = box
    oy, ox = origin
    iy0, iy1 = max(y0, oy), min(y1, oy + shape[0])
    ix0, ix1 = max(x0, ox), min(x1, ox + shape[1])
    if iy0 >= iy1 or ix0 >= ix1:
        return None
    return ((slice(iy0 - oy, iy1 - oy), slice(ix0 - ox, ix1 - ox)),
            (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)))


def _cut_own(result: tuple[np.ndarray, Part], box: Box) -> Part:
    """The strip of a finished chunk's own accumulation that spills into ``box``."""
    return _strip(result[1], box)


def _strip(part: Part, box: Box) -> Part:
    """The piece of ``part`` that lies in ``box``.

    A copy, so the whole accumulation can be freed while the strip waits for the
    chunk it belongs to.
    """
    sums, origin = part
    src, _ = _overlap(box, origin, sums.shape[1:])
    top_left = (origin[0] + src[0].start, origin[1] + src[1].start)
    return sums[(slice(None), *src)].copy(), top_left


def _blocks_under(image: da.Array, region: tuple[slice, ...]) -> tuple[
        list[tuple[int, int, int, int, np.ndarray]], list[tuple[int, ...]], list[tuple[Any, ...]]]:
    """``image``'s blocks under ``region`` (plain slices): per axis (start, stop, first
    block, end block, block edges); the blocks' indices; their dask keys."""
    spans = []
    for sl, chunks, n in zip(region, image.chunks, image.shape, strict=True):
        start, stop, _ = sl.indices(n)
        edges = np.cumsum((0, *chunks))
        first = int(np.searchsorted(edges, start, side="right")) - 1
        end = max(first + 1, int(np.searchsorted(edges, stop, side="left")))
        spans.append((start, stop, first, end, edges))
    blocks = list(product(*(range(first, end) for _, _, first, end, _ in spans)))
    return spans, blocks, [(image.name, *b) for b in blocks]


def read_region(image: da.Array, region: tuple[slice, ...], workers: int = 1,
                shared: SharedBlocks | None = None) -> np.ndarray:
    """``image[region]`` as numpy (plain slices with steps of 1), computed from the
    image's own blocks under it, on ``workers`` threads. With ``shared``, the blocks
    kept there are taken instead of computed, and those computed are kept there for
    the reads still to come that asked for them (:mod:`wfe.block_cache`).

    Slicing the dask array instead builds a graph of one getitem per block and
    concatenates them: on a 4096² slide read in four regions that took 100-114 ms
    against 86 ms. The slice is made here, not when the graph is built: slicing a
    dask array costs time in proportion to its chunk count, once per output chunk.
    """
    spans, blocks, keys = _blocks_under(image, region)
    found = {}
    if shared is not None:
        found = {key: block for key in keys if (block := shared.take(key)) is not None}
    missing = [key for key in keys if key not in found]
    if missing:
        graph = image.__dask_graph__().cull(set(missing))
        # dask's schedulers given as functions: named, dask would look for a
        # distributed client at every read.
        if workers > 1 and len(missing) > 1:
            values = get_threaded(graph, missing, num_workers=min(workers, len(missing)))
        else:
            values = get_sync(graph, missing)
        for key, value in zip(missing, values, strict=True):
            found[key] = value = np.asarray(value)
            if shared is not None:
                shared.keep(key, value)
    out = np.empty(tuple(stop - start for start, stop, *_ in spans), image.dtype)
    for block, key in zip(blocks, keys, strict=True):
        dst, src = [], []
        for b, (start, stop, _, _, edges) in zip(block, spans, strict=True):
            lo, hi = max(start, int(edges[b])), min(stop, int(edges[b + 1]))
            dst.append(slice(lo - start, hi - start))
            src.append(slice(lo - int(edges[b]), hi - int(edges[b])))
        out[tuple(dst)] = found[key][tuple(src)]
    return out


def chunk_edges(height: int, width: int, window: int, overlap: int,
                chunk: int) -> tuple[list[int], list[int]]:
    """The output chunks' edges of :func:`sliding_window_sums` along y and x.

    On multiples of the stride: a chunk's windows then reach only ``overlap`` pixels
    into the next chunk, which keeps the pieces waiting for their chunk (the frontier)
    small. The chunk is the multiple of the stride closest to ``chunk``.
    """
    block = _block(window, overlap, chunk)
    return list(range(0, height, block)) + [height], list(range(0, width, block)) + [width]


def _block(window: int, overlap: int, chunk: int) -> int:
    """The chunk size of :func:`chunk_edges`: the multiple of the stride closest to ``chunk``."""
    stride = max(window - overlap, 1)
    return max(1, round(chunk / stride)) * stride


class _ReadGate:
    """Keeps a pass's reading at most ``ahead`` regions ahead of its chunks' tasks, and
    gives the model to one of those tasks at a time."""

    def __init__(self, ahead: int = 1, workers: int = 1,
                 reader: Callable[[tuple[slice, ...]], Any] | None = None) -> None:
        self._ahead = ahead
        self._workers = workers
        self._reader = reader  # reads a region in place of the image's own blocks
        self._waiting = 0  # regions read whose chunk's task has not yet taken them
        self._running = 0  # chunks' tasks under way
        self._model_taken = False  # a chunk's task has the model (one at a time)
        self._first = "unread"  # the pass's first read: "unread", "reading", "read"
        self._changed = threading.Condition()
        self._shared = SharedBlocks()  # blocks under two regions, decoded once
        self.token = uuid.uuid4().hex  # names the pass's tasks: each call is a new pass

    def read(self, image: da.Array, region: tuple[slice, ...]) -> np.ndarray:
        """Read ``image[region]``, first waiting (only while a chunk's task runs) for its turn.

        The pass's first read runs alone, on every core: nothing else can start
        before a region is read, and the model waits for it. Later reads wait for it
        to end (it always does, so that never deadlocks either), and run on the
        gate's ``workers`` threads."""
        with self._changed:
            first = self._first == "unread"
            if first:
                self._first = "reading"
            while not first and (self._first == "reading"
                                 or (self._waiting >= self._ahead and self._running)):
                self._changed.wait()
            self._waiting += 1
        try:
            if self._reader is not None:
                return self._reader(region)
            return read_region(image, region,
                               workers=available_cores() if first else self._workers,
                               shared=self._shared)
        except BaseException:
            self._update(waiting=-1)
            raise
        finally:
            if first:
                with self._changed:
                    self._first = "read"
                    self._changed.notify_all()

    def will_read(self, image: da.Array, region: tuple[slice, ...]) -> None:
        """A task of the pass will read ``image[region]``: the blocks under it that
        other regions share are decoded once."""
        if self._reader is None:
            self._shared.expect(_blocks_under(image, region)[2])

    def started(self) -> None:
        """A chunk's task has taken its region: it runs once no other chunk of the pass
        has the model (:meth:`handed_over`).

        The model runs one batch at a time anyway (and two batches of one chunk are in
        flight: :func:`_accumulate`), so a second chunk under way gains nothing but
        holds its sums (81 MiB for three classes at the default chunk) beside the
        first's; a larger image's wavefront has more chunks ready at once, so that
        made the peak memory grow with the image (docs/inference.md, Memory). The
        chunk that has the model always hands it over (it waits for nothing but the
        model), so the wait cannot deadlock."""
        with self._changed:
            while self._model_taken:
                self._changed.wait()
            self._model_taken = True
            self._waiting -= 1
            self._running += 1
            self._changed.notify_all()

    def handed_over(self) -> None:
        """The running chunk has handed the model its last batch: the next chunk may
        start, its first batch queued behind that one, so that the model does not wait
        between chunks. Reads still count the chunk as running until it ends."""
        with self._changed:
            self._model_taken = False
            self._changed.notify_all()

    def ended(self) -> None:
        """A chunk's task has ended."""
        self._update(running=-1)

    def _update(self, waiting: int = 0, running: int = 0) -> None:
        with self._changed:
            self._waiting += waiting
            self._running += running
            self._changed.notify_all()


@dataclass(frozen=True)
class _Pass:
    """What every chunk of one sliding-window pass shares."""

    predict: Predict
    window: int
    weights: np.ndarray
    out_channels: int
    batch_size: int
    gate: _ReadGate
    accumulate: Accumulate | None = None


def _finish(run: _Pass, box: Box, starts: list[tuple[int, int]], origin: tuple[int, int],
            region: np.ndarray | None, *incoming: Part) -> tuple[np.ndarray, Part | None]:
    """Predict a chunk's own windows and add the strips spilled into it: the chunk's
    sums, and its own accumulation (for the strips it spills into its neighbours).
    ``region`` is the image under its windows (read at ``origin``); the pass's gate is
    told when the chunk takes it and while the chunk runs."""
    own = _predict(run, region, starts, origin) if starts else None
    if own is not None:
        hit = _overlap(box, own[1], own[0].shape[1:])
        if hit is not None and hit[1] == (slice(0, box[1] - box[0]), slice(0, box[3] - box[2])):
            return _sum_into(own, hit[0], incoming), own
    parts = [*incoming, *([own] if own is not None else [])]
    return _assemble(box, run.out_channels, *parts), own


def _sum_into(own: Part, src: tuple[slice, slice], incoming: tuple[Part, ...]) -> np.ndarray:
    """The sums of a chunk whose own accumulation covers all of it (``src``, in the
    accumulation): the strips spilled into the chunk are added into the accumulation
    there, and the chunk is a view of it. No zeroed chunk to add everything into. The
    strips later cut from the same accumulation for the chunks to the right and below
    lie outside the chunk: they are not changed.
    """
    sums, (oy, ox) = own
    # The strips are cut to the chunk: they land inside ``src``.
    _add_parts(sums, (oy, oy + sums.shape[1], ox, ox + sums.shape[2]), incoming)
    return sums[(slice(None), *src)]


def _assemble(box: Box, out_channels: int, *parts: Part) -> np.ndarray:
    """Add up the accumulations that reach one output chunk."""
    y0, y1, x0, x1 = box
    sums = np.zeros((out_channels + 1, y1 - y0, x1 - x0), np.float32)
    _add_parts(sums, box, parts)
    return sums


def _add_parts(sums: np.ndarray, extent: Box, parts: tuple[Part, ...]) -> None:
    """Add each part into ``sums`` (which covers ``extent``) where it overlaps it."""
    for part, origin in parts:
        hit = _overlap(extent, origin, part.shape[1:])
        if hit is not None:
            src, dst = hit
            sums[(slice(None), *dst)] += part[(slice(None), *src)]


def _predict(run: _Pass, region: np.ndarray, starts: list[tuple[int, int]],
             origin: tuple[int, int]) -> Part:
    """The sums of the windows ``starts`` in ``region`` (read at ``origin``); the pass's
    gate is told when the region is taken, when the chunk has handed the model its last
    batch, and when it ends."""
    run.gate.started()
    handed = False

    def hand_over() -> None:
        nonlocal handed
        if not handed:
            handed = True
            run.gate.handed_over()

    try:
        if run.accumulate is not None:
            sums = run.accumulate(region, starts, origin, run.weights, run.batch_size,
                                  hand_over)
            expected = (run.out_channels + 1, *region.shape[1:])
            if sums.shape != expected:
                raise ValueError(f"accumulate returned shape {sums.shape}, expected {expected}")
            return sums, origin
        return _accumulate(region, starts, origin, run.predict, run.window, run.weights,
                           run.out_channels, run.batch_size, submitted=hand_over)
    finally:
        hand_over()
        run.gate.ended()


def _reaches(start: tuple[int, int], box: Box, window: int) -> bool:
    """Whether the window at ``start`` reaches into ``box``."""
    y, x = start
    return y < box[1] and box[0] < y + window and x < box[3] and box[2] < x + window


def _reaching_needed(starts: list[tuple[int, int]], k: int, m: int, reach: int,
                     y_edges: list[int], x_edges: list[int],
                     needed: Callable[[int, int], bool], window: int) -> list[tuple[int, int]]:
    """The windows of the chunk (k, m), which is not needed, that reach a needed chunk to
    its right or below: each is run once, whichever and however many chunks it reaches."""
    boxes = [(y_edges[i], y_edges[i + 1], x_edges[j], x_edges[j + 1])
             for i in range(k, min(k + reach, len(y_edges) - 2) + 1)
             for j in range(m, min(m + reach, len(x_edges) - 2) + 1)
             if (i, j) != (k, m) and needed(i, j)]
    return [s for s in starts if any(_reaches(s, b, window) for b in boxes)]


def _add_spill(layer: dict[Any, Any], key: tuple[Any, ...], read_key: tuple[Any, ...],
               run: _Pass, image: da.Array, starts: list[tuple[int, int]]) -> None:
    """Tasks predicting ``starts`` again, the windows of a chunk that is not computed (its
    result is kept from an earlier run) that reach needed chunks: their sums, from which
    each such chunk's strip is cut as :func:`_cut_own` cuts it from a chunk's own."""
    y0, x0 = min(y for y, _ in starts), min(x for _, x in starts)
    index = (slice(None), slice(y0, max(y for y, _ in starts) + run.window),
             slice(x0, max(x for _, x in starts) + run.window))
    run.gate.will_read(image, index)
    layer[read_key] = (partial(run.gate.read, image, index),)
    layer[key] = (partial(_predict, run, starts=starts, origin=(y0, x0)), read_key)


def _read_after(gate: _ReadGate, image: da.Array, index: tuple[slice, ...],
                *_follows: Any) -> np.ndarray:
    """``gate.read(image, index)``, run after the tasks given as ``_follows``."""
    return gate.read(image, index)


def _not_computed(box: Box) -> np.ndarray:
    """Stands for a chunk the caller said it does not need; it must never be asked for."""
    raise RuntimeError(f"the sums of chunk {box} were asked for, but the chunk was marked "
                       "as not needed")


def _unreached(shape: tuple[int, int, int]) -> np.ndarray:
    """The sums of a chunk no window reaches: zero (a read-only view)."""
    return np.broadcast_to(np.zeros((), np.float32), shape)


def blend_block(sums: np.ndarray, background: np.ndarray,
                dtype: Any = np.float32) -> np.ndarray:
    """The blended prediction of a block of :func:`sliding_window_sums`: Σ p·w / Σ w per
    channel as ``dtype``, and ``background`` where no window reached (Σ w is 0)."""
    num, den = sums[:-1], sums[-1]
    covered = den > 0
    if covered.all():
        return np.divide(num, den).astype(dtype, copy=False)
    filled = np.empty(num.shape, np.float32)
    filled[:] = np.asarray(background, np.float32)[:, None, None]
    np.divide(num, den, out=filled, where=covered[None])
    return filled.astype(dtype, copy=False)


def blended(sums: da.Array, background: np.ndarray | None = None,
            dtype: Any = np.float32) -> da.Array:
    """:func:`blend_block` over every block of a :func:`sliding_window_sums` array (lazy)."""
    k = sums.shape[0] - 1
    if background is None:
        background = np.zeros(k, np.float32)
    return sums.map_blocks(blend_block, np.asarray(background, np.float32), dtype,
                           chunks=((k,), *sums.chunks[1:]), dtype=dtype)


def sliding_window_map(image: da.Array, predict: Predict, *, out_channels: int, window: int,
                       overlap: int, blend: str = "gaussian", sigma_scale: float = 0.125,
                       chunk: int = 2048, batch_size: int = 8,
                       keep: Callable[[int, int], bool] | None = None,
                       background: np.ndarray | None = None,
                       dtype: Any = np.float32) -> da.Array:
    """Apply ``predict`` over overlapping windows of ``image`` (c, y, x); return the
    blended predictions (k, y, x): :func:`sliding_window_sums`, divided.

    Parameters
    ----------
    background
        What pixels no kept window covers get (default: zeros).
    dtype
        The result's dtype.

    The other parameters are :func:`sliding_window_sums`'.
    """
    sums = sliding_window_sums(image, predict, out_channels=out_channels, window=window,
                               overlap=overlap, blend=blend, sigma_scale=sigma_scale,
                               chunk=chunk, batch_size=batch_size, keep=keep)
    return blended(sums, background, dtype)


def sliding_window_sums(image: da.Array, predict: Predict, *, out_channels: int, window: int,
                        overlap: int, blend: str = "gaussian", sigma_scale: float = 0.125,
                        chunk: int = 2048, batch_size: int = 8,
                        keep: Callable[[int, int], bool] | None = None,
                        needed: Callable[[int, int], bool] | None = None,
                        after: Sequence[tuple[da.Array, After]] = (),
                        accumulate: Accumulate | None = None,
                        read_workers: int = 1,
                        read: Callable[[tuple[slice, ...]], Any] | None = None) -> da.Array:
    """Apply ``predict`` over overlapping windows of ``image`` (c, y, x); return, per
    pixel, the weighted sum of the windows' predictions for each of the ``k`` channels
    and the sum of the weights: ``(k + 1, y, x)`` float32, the channel axis one chunk.

    :func:`blended` divides them; a consumer that needs only the most probable
    channel (labels) takes it from the sums and never divides.

    Parameters
    ----------
    predict
        Maps a batch ``(n, c, window, window)`` of image pixels to
        ``(n, out_channels, window, window)`` predictions.
    blend, sigma_scale
        The windows' weights (:func:`wfe.grid.blend_weights`).
    keep
        ``keep(y, x)`` is false for windows to skip (e.g. no tissue); pixels no
        kept window covers get weight 0.
    chunk
        Approximate output chunk size: chunks are the multiple of the stride
        (``window - overlap``) closest to it (:func:`chunk_edges`). The result does not
        depend on it.
    needed
        ``needed(i, j)`` is false for output chunks (by block index) that will not be
        asked for, such as chunks kept from an earlier run: their windows are run
        only where they reach a needed chunk (a strip along its edge), and asking for
        such a chunk raises.
    after
        Pairs ``(array, blocks)``: chunk ``(i, j)`` is read only once ``array``'s
        ``blocks(i, j)`` (block indices) are computed. An order, not data: another
        pass that this one is fused with is then computed in step with it, its chunks
        ready as this pass's chunks need them, rather than after this whole pass
        (which would hold every chunk of it in memory until then).
    accumulate
        Computes a region's sums itself, in place of ``predict`` and the blending here:
        ``accumulate(region, starts, origin, weights, batch_size, submitted)`` returns
        the ``(out_channels + 1, h, w)`` sums of the windows at ``starts`` (image
        coordinates) in ``region`` (the image read at ``origin``), each window's
        prediction times ``weights`` and the weights, summed where windows overlap. A
        model on a GPU blends there, so that only a region's pixels go to the device
        and only its sums come back, not every window's prediction. It may call
        ``submitted()`` once the model has all the region's windows (the next chunk
        then starts, while these sums come back); else that happens when it returns.
    read_workers
        Threads decoding each region after the first (which uses every core). One
        when the model runs on the CPU, whose cores it needs; more when it does not.
    read
        ``read(index)`` gives the region ``image[index]`` (plain slices) in place of
        computing it from ``image``'s blocks, in whatever form ``accumulate`` takes
        (only with ``accumulate``): e.g. a tensor on the model's device, decoded there
        from the image's compressed tiles (:mod:`wfe.encoded`).
    """
    if read is not None and accumulate is None:
        raise ValueError("read needs accumulate: predict takes numpy regions only")
    _, height, width = image.shape
    grid = WindowGrid(height, width, window, overlap)
    weights = blend_weights(window, blend, sigma_scale, overlap)
    y_edges, x_edges = chunk_edges(height, width, window, overlap, chunk)
    block = _block(window, overlap, chunk)

    # Chunks are finished in a wavefront: a chunk's task runs after the chunks to its
    # left and above, takes the strips their windows spilled into it, predicts its
    # own windows and returns its finished sums plus its own accumulation, from
    # which the strips for the chunks to its right and below are cut. Only strips
    # wait in memory, never whole accumulations.
    # The graph is written as one layer of plain tasks: building it takes time in
    # proportion to the number of chunks (one dask.delayed call per task merges
    # the graphs of its dependencies, which grows with the square).
    gate = _ReadGate(workers=read_workers, reader=read)
    run = _Pass(predict, window, weights, out_channels, batch_size, gate, accumulate)
    name = f"sliding-window-{gate.token}"
    read, finish, cut = f"{name}-read", f"{name}-finish", f"{name}-cut"
    spill, spill_read = f"{name}-spill", f"{name}-spill-read"
    regions: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    skipped: dict[tuple[int, int], list[tuple[int, int]]] = {}  # not needed: their windows
    reach = -(-window // block)  # how many chunks away a chunk's windows can end
    layer: dict[Any, Any] = {}
    for i in range(len(y_edges) - 1):
        for j in range(len(x_edges) - 1):
            box = (y_edges[i], y_edges[i + 1], x_edges[j], x_edges[j + 1])
            starts = grid.owned_by(*box)
            if keep is not None:
                starts = [s for s in starts if keep(*s)]
            if needed is not None and not needed(i, j):
                skipped[(i, j)] = starts
                layer[(name, 0, i, j)] = (partial(_not_computed, box),)
                continue
            incoming = []
            for k in range(max(i - reach, 0), i + 1):
                for m in range(max(j - reach, 0), j + 1):
                    if (k, m) in skipped:
                        if any(_reaches(s, box, window) for s in skipped[(k, m)]):
                            if (spill, k, m) not in layer:  # needed: ``needed`` was given
                                _add_spill(layer, (spill, k, m), (spill_read, k, m), run, image,
                                           _reaching_needed(skipped[(k, m)], k, m, reach,
                                                            y_edges, x_edges, needed, window))
                            layer[(cut, i, j, k, m)] = (partial(_strip, box=box),
                                                        (spill, k, m))
                            incoming.append((cut, i, j, k, m))
                        continue
                    if (k, m) not in regions:
                        continue
                    ry0, ry1, rx0, rx1 = regions[(k, m)]
                    if ry0 < box[1] and box[0] < ry1 and rx0 < box[3] and box[2] < rx1:
                        layer[(cut, i, j, k, m)] = (partial(_cut_own, box=box), (finish, k, m))
                        incoming.append((cut, i, j, k, m))
            shape = (out_channels + 1, box[1] - box[0], box[3] - box[2])
            if not starts and not incoming:
                layer[(name, 0, i, j)] = (partial(_unreached, shape),)
                continue
            region = None
            origin = (box[0], box[2])
            if starts:
                ry0, rx0 = min(y for y, _ in starts), min(x for _, x in starts)
                ry1 = max(y for y, _ in starts) + window
                rx1 = max(x for _, x in starts) + window
                regions[(i, j)] = (ry0, ry1, rx0, rx1)
                index = (slice(None), slice(ry0, ry1), slice(rx0, rx1))
                follows = [(a.name, *b) for a, blocks in after for b in blocks(i, j)]
                gate.will_read(image, index)
                layer[(read, i, j)] = (partial(_read_after, gate, image, index), *follows)
                region = (read, i, j)
                origin = (ry0, rx0)
            layer[(finish, i, j)] = (partial(_finish, run, box, starts, origin), region, *incoming)
            layer[(name, 0, i, j)] = (getitem, (finish, i, j), 0)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[a for a, _ in after])
    chunks = ((out_channels + 1,), tuple(np.diff(y_edges).tolist()),
              tuple(np.diff(x_edges).tolist()))
    return da.Array(graph, name, chunks=chunks, dtype=np.float32)
