"""Loading a model (card + safetensors) once per process and running it on batches."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from wfe.collector import collection_paused
from wfe.encoded import EncodedTiles
from wfe.errors import InputError, WfeError
from wfe.heap import reuse_blocks_up_to
from wfe.plugins import Registry
from wfe.specs import load_target
from wfe_builtin.models.card import ModelCard, load_card
from wfe_builtin.models.layout import choose_channels_last, set_channels_last
from wfe_builtin.models.torch_thread import on_torch_thread

__all__ = ["LoadedModel", "load_model", "resolve_device", "tta_passes"]

# ``batch_size: auto``: at most this many windows per call (beyond it CPUs gain
# nothing and GPUs little), using at most this share of the free memory. On a CPU a
# batch of 4 runs as fast per window as one of 8 and its pass needs half the memory,
# which a fresh process must fault in (docs/inference.md, Batch size).
BATCH_CAP = {"cuda": 32, "mps": 16, "cpu": 4}
MEMORY_SHARE = 0.5


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, then mps, then cpu; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise WfeError("device 'cuda' was asked for but no CUDA device is available",
                       "use --device cpu or auto")
    return device


def _autocast_dtype(precision: str, device: str) -> Any:
    import torch

    if precision == "auto":
        return torch.float16 if device.split(":")[0] == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@dataclass
class LoadedModel:
    """A network ready for inference, with its card and how to run it."""

    card: ModelCard
    net: Any
    device: str
    autocast: Any
    channels_last: bool = False
    mean: Any = None  # normalisation as (1, c, 1, 1) tensors, set once at load
    std: Any = None
    _gain: Any = None
    _offset: Any = None
    window_bytes: int = 0  # memory one window needs in a forward pass, measured at load
    largest_buffer: int = 0  # bytes of its largest activation on the CPU, measured at load
    compiled: bool = False  # ``net`` is ``torch.compile``'s: each new input shape compiles
    padded_batch: int = 0  # with a compiled net: every batch is padded to this many windows
    _blend: Any = None  # (the pass's blending weights, their copy on the device)

    def __post_init__(self) -> None:
        import torch

        norm = self.card.normalize
        self.mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
        # (pixel / scale - mean) / std as one multiply and one subtract, in place, on
        # the device.
        self._gain = (1.0 / (norm.scale * self.std)).to(self.device)
        self._offset = (self.mean / self.std).to(self.device)

    def predict(self, batch: np.ndarray, tta: tuple[str, ...] = ()) -> np.ndarray:
        """Class probabilities ``(n, k, h, w)`` float32 for raw pixels ``(n, c, h, w)``.

        Runs on the process's torch thread (:mod:`wfe_builtin.models.torch_thread`), one
        batch at a time: torch already uses every core, and callers cut out the next
        batch while this one runs.
        """
        return on_torch_thread(self._predict, batch, tta)

    def _predict(self, batch: np.ndarray, tta: tuple[str, ...]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            # Pixels go to the device as they are (uint8: a quarter of float32) and are
            # normalised there.
            probs = self._probabilities(torch.from_numpy(np.ascontiguousarray(batch))
                                        .to(self.device), tta)
            finite = bool(torch.isfinite(probs.sum()))  # NaN or ±inf anywhere: not finite
            out = probs.cpu().numpy()
        if not finite:
            raise self._not_finite()
        return out

    def _probabilities(self, pixels: Any, tta: tuple[str, ...]) -> Any:
        """The averaged class probabilities (float32 tensor on the device) of raw pixels
        ``(n, c, h, w)`` already on the device; under ``torch.inference_mode()``."""
        import torch

        views = _tta_views(tta)
        n = pixels.shape[0]
        if n < self.padded_batch:  # one shape for a compiled network (compile_for)
            pixels = torch.cat([pixels, pixels.new_zeros((self.padded_batch - n,
                                                          *pixels.shape[1:]))])
        x = pixels.to(torch.float32, copy=True)  # a copy: the caller's pixels stay as they are
        x.mul_(self._gain).sub_(self._offset)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        total = None
        for forward, back in views:
            with torch.autocast(device_type=self.device.split(":")[0],
                                dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                logits = self.net(forward(x))[:n]
            probs = back(torch.softmax(logits.float(), dim=1))
            total = probs if total is None else total.add_(probs)
        if len(views) > 1:
            total.div_(len(views))
        return total

    def _not_finite(self) -> WfeError:
        return WfeError(f"model {self.card.name!r} produced NaN or infinite values",
                        "check the weights, or try precision: fp32")

    @property
    def blends_on_device(self) -> bool:
        """Whether the segment stage blends on the model's device (:meth:`accumulate`):
        on a GPU, where moving every window's prediction to the host and blending it
        there would cost more than the network; not on the CPU, where numpy blends
        one batch while the model runs the next (docs/inference.md)."""
        return self.device != "cpu"

    def accumulate(self, region: np.ndarray, starts: list[tuple[int, int]],
                   origin: tuple[int, int], weights: np.ndarray, batch_size: int,
                   submitted: Callable[[], None] = lambda: None,
                   tta: tuple[str, ...] = ()) -> np.ndarray:
        """The blended sums of the windows at ``starts`` in ``region`` (raw pixels
        ``(c, h, w)`` read at ``origin``), computed on the model's device: each window's
        probabilities times ``weights``, summed per class, then the weights summed, as a
        ``(k + 1, h, w)`` float32 array (the :data:`wfe.stitch.Accumulate` contract).

        The region goes to the device once (uint8; or it is there already, decoded
        there: :meth:`read_encoded`) and the windows are cut there; the sums come back
        once. A window's overlap with its neighbours is not sent again, and no window's
        prediction crosses to the host. On a CUDA device the sums come back on a copy
        stream of their own, into pinned memory, waited for here rather than on the
        torch thread: the thread queues the next region's passes meanwhile, so the
        GPU is not left idle while 81 MiB (a 2304² region, four classes) cross.
        ``submitted()`` is called once the passes are queued, before that wait.
        """
        if isinstance(region, np.ndarray) and self.device.startswith("cuda"):
            region = _pinned(region)  # here, on the caller's thread, not the torch thread
        wait = on_torch_thread(self._accumulate, region, starts, origin, weights,
                               batch_size, tta)
        submitted()
        sums, finite = wait()
        if not finite:
            raise self._not_finite()
        return sums

    def _accumulate(self, region: np.ndarray, starts: list[tuple[int, int]],
                    origin: tuple[int, int], weights: np.ndarray, batch_size: int,
                    tta: tuple[str, ...]) -> Callable[[], tuple[np.ndarray, bool]]:
        """The region's sums, as a call that waits for them: ``() -> (sums, finite)``."""
        import torch

        k, window = len(self.card.classes), weights.shape[0]
        oy, ox = origin
        with torch.inference_mode():
            if not isinstance(region, torch.Tensor):
                pixels = torch.from_numpy(np.ascontiguousarray(region)).to(self.device)
            elif region.device.type == "cpu" and self.device.startswith("cuda"):
                pixels = _upload(region, torch.device(self.device))  # pinned (accumulate)
            else:
                pixels = region.to(self.device)  # decoded on the device: there already
            w = self._weights_on_device(weights)
            sums = torch.zeros((k + 1, *region.shape[1:]), dtype=torch.float32,
                               device=self.device)
            num, den = sums[:k], sums[k]
            for i in range(0, len(starts), batch_size):
                batch = starts[i:i + batch_size]
                probs = self._probabilities(torch.stack(
                    [pixels[:, y - oy:y - oy + window, x - ox:x - ox + window]
                     for y, x in batch]), tta)
                for (y, x), p in zip(batch, probs, strict=True):
                    ys, xs = slice(y - oy, y - oy + window), slice(x - ox, x - ox + window)
                    num[:, ys, xs].addcmul_(p, w)
                    den[ys, xs].add_(w)
            # A NaN or infinity in any prediction reaches the sums (times a weight of 0
            # it is NaN): one check per region, not one wait for the device per batch.
            finite = torch.isfinite(num.sum())
            if sums.is_cuda:
                return _download(sums, finite)
            out, ok = sums.cpu().numpy(), bool(finite)
        return lambda: (out, ok)

    def _weights_on_device(self, weights: np.ndarray) -> Any:
        """``weights`` (a pass's blending weights, the same array for each of its regions)
        on the device, copied there once per pass: a copy from host memory at every
        region would make the torch thread wait for the device's queued work each time
        (CUDA finishes a stream's work before a blocking copy from pageable memory)."""
        import torch

        if self._blend is None or self._blend[0] is not weights:
            self._blend = (weights, torch.tensor(weights, dtype=torch.float32)  # a copy
                           .to(self.device))
        return self._blend[1]

    def decodes(self, tiles: EncodedTiles) -> bool:
        """Whether :meth:`read_encoded` can decode ``tiles`` on the model's device: JPEG,
        grey or RGB (torchvision's ``decode_jpeg``: nvJPEG on a CUDA device)."""
        return (tiles.codec == "jpeg" and tiles.shape[0] in (1, 3)
                and self.device.split(":")[0] in ("cuda", "cpu"))

    def read_encoded(self, tiles: EncodedTiles, index: tuple[slice, ...]) -> Any:
        """The region ``index`` (``(channels, rows, columns)``, plain slices) of the level
        ``tiles`` describes, as a ``(c, h, w)`` uint8 tensor on the model's device,
        decoded there: only the compressed tiles cross to the device. The bytes are read
        on the calling thread, the tiles decoded (in one batch) and placed on the torch
        thread. A tile never written is the value the reader gives it (``tiles.fill``)."""
        _, ys, xs = index
        indices, boxes = tiles.under(ys, xs)
        streams = tiles.fetch(indices)
        return on_torch_thread(self._decode_region, tiles, streams, boxes,
                               (ys.stop - ys.start, xs.stop - xs.start))

    def _decode_region(self, tiles: EncodedTiles, streams: list[bytes],
                       boxes: list[tuple[slice, slice, slice, slice]],
                       size: tuple[int, int]) -> Any:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        c = tiles.shape[0]
        present = [n for n, data in enumerate(streams) if data]
        region = torch.empty((c, *size), dtype=torch.uint8, device=self.device)
        if len(present) < len(streams):
            region.fill_(tiles.fill)
        if present:
            decoded = decode_jpeg([torch.frombuffer(bytearray(streams[n]), dtype=torch.uint8)
                                   for n in present],
                                  mode=ImageReadMode.RGB if c == 3 else ImageReadMode.GRAY,
                                  device=self.device)
            for n, tile in zip(present, decoded, strict=True):
                ry, rx, ty, tx = boxes[n]
                region[:, ry, rx] = tile[:, ty, tx]
        return region

    def reuse_buffers(self, batch_size: int) -> None:
        """On the CPU, keep the forward pass's buffers for batches of ``batch_size`` in
        the heap between batches rather than mapped and faulted in anew for each
        (:func:`wfe.heap.reuse_blocks_up_to`): a third of a pass's time went to that.
        Twice the largest layer output, for the tensors made between layers (the
        U-Net decoder's concatenations)."""
        if self.device == "cpu" and self.largest_buffer:
            reuse_blocks_up_to(2 * batch_size * self.largest_buffer,
                               batch_size * self.window_bytes)

    def compile_for(self, batch_size: int, window: int) -> None:
        """With a compiled network, run every batch as ``batch_size`` windows of
        ``window`` pixels (a short batch padded with empty windows, their predictions
        dropped), and compile for that shape now. Each new shape compiles the network
        again (the demo model: 64 s on two CPU cores for the first shape, 49 s for the
        next): a pass's last batch, or a chunk's, is often short, and would compile
        inside the run, once per size. Without compiling, nothing to do."""
        if not self.compiled or self.padded_batch == batch_size:
            return
        self.padded_batch = batch_size
        self.predict(np.zeros((1, self.card.in_channels, window, window), np.uint8))

    def auto_batch_size(self) -> int:
        """Windows per call for ``batch_size: auto``: as many as fit in half the free
        memory of the device (host memory for the CPU), at most ``BATCH_CAP``."""
        kind = self.device.split(":")[0]
        cap = BATCH_CAP.get(kind, 8)
        if not self.window_bytes:
            return cap
        return max(1, min(cap, int(MEMORY_SHARE * free_memory(self.device)
                                   // self.window_bytes)))


def _pinned(array: np.ndarray) -> Any:
    """``array`` copied into page-locked (pinned) host memory, as a CPU tensor. A copy to
    a CUDA device from ordinary (pageable) memory first waits for everything queued on
    the device to finish, so the torch thread could not queue a region's passes while
    the last region's ran, and the GPU sat idle during each copy; from pinned memory the
    copy is queued like a kernel, and the torch thread goes on."""
    import torch

    source = torch.from_numpy(np.ascontiguousarray(array))
    host = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
    host.copy_(source)
    return host


@lru_cache(maxsize=8)
def _copy_stream(device: Any, direction: str) -> Any:
    """A CUDA stream for copies between ``device`` and the host, one per device and
    direction (``"in"`` to the device, ``"out"`` from it)."""
    import torch

    return torch.cuda.Stream(device)


def _upload(host: Any, device: Any) -> Any:
    """``host`` (a CPU tensor in pinned memory) copied to ``device`` on the upload stream,
    beside the passes running on the current stream, which waits for the copy before
    its next work. Queued, not waited for: the caller goes on at once."""
    import torch

    current = torch.cuda.current_stream(device)
    stream = _copy_stream(device, "in")
    with torch.cuda.stream(stream):
        pixels = host.to(device, non_blocking=True)
    current.wait_stream(stream)
    # Made on the upload stream, used on the current one: its memory is not reused
    # before the current stream's work with it is done.
    pixels.record_stream(current)
    return pixels


def _download(sums: Any, finite: Any) -> Callable[[], tuple[np.ndarray, bool]]:
    """Start copying ``sums`` and ``finite`` (CUDA tensors, being computed on the current
    stream) to pinned host memory on the copy stream; return the call that waits for
    the copy and gives them as ``(numpy array, bool)``."""
    import torch

    stream = _copy_stream(sums.device, "out")
    host = torch.empty(sums.shape, dtype=sums.dtype, pin_memory=True)
    flag = torch.empty((), dtype=torch.bool, pin_memory=True)
    stream.wait_stream(torch.cuda.current_stream(sums.device))
    with torch.cuda.stream(stream):
        host.copy_(sums, non_blocking=True)
        flag.copy_(finite, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    # The device memory is not reused for other tensors before the copy has read it.
    sums.record_stream(stream)
    finite.record_stream(stream)

    def wait() -> tuple[np.ndarray, bool]:
        done.synchronize()
        return host.numpy(), bool(flag)

    return wait


def free_memory(device: str) -> int:
    """Bytes free on ``device``: the GPU's free memory, else the host's available memory."""
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def _blank_window(card: ModelCard) -> np.ndarray:
    """One empty window of the card's size and bands, for warm-up passes."""
    return np.zeros((1, card.in_channels, card.window, card.window), np.uint8)


def _window_bytes(model: LoadedModel) -> tuple[int, int]:
    """Memory one window takes through the network, and its largest layer output (0 on
    CUDA). Measured by the allocator on CUDA; elsewhere the sum of every layer's output
    (an upper bound: inference frees most of them on the way), plus the input and the
    probabilities."""
    import torch

    card = model.card
    one = _blank_window(card)
    io = 4 * card.window**2 * (card.in_channels + 2 * len(card.classes))
    if model.device.startswith("cuda"):
        torch.cuda.synchronize(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)
        base = torch.cuda.memory_allocated(model.device)
        model.predict(one)
        return max(torch.cuda.max_memory_allocated(model.device) - base, 1) + io, 0
    total = largest = 0

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        nonlocal total, largest
        outputs = output if isinstance(output, (tuple, list)) else [output]
        sizes = [t.numel() * t.element_size() for t in outputs if torch.is_tensor(t)]
        total += sum(sizes)
        largest = max([largest, *sizes])

    leaves = [m for m in model.net.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        model.predict(one)
    finally:
        for handle in handles:
            handle.remove()
    return total + io, largest


def tta_passes(tta: tuple[str, ...]) -> int:
    """Forward passes per window under ``tta`` (identity, 3 rotations, 2 flips)."""
    return 1 + 3 * ("rot90" in tta) + 2 * ("flip" in tta)


def _tta_views(tta: tuple[str, ...]) -> list[tuple[Any, Any]]:
    """(forward, inverse) pairs: identity, the rotations, the flips."""
    import torch

    views = [(lambda t: t, lambda t: t)]
    if "rot90" in tta:
        for k in (1, 2, 3):
            views.append((lambda t, k=k: torch.rot90(t, k, (2, 3)),
                          lambda t, k=k: torch.rot90(t, -k, (2, 3))))
    if "flip" in tta:
        for dim in (2, 3):
            views.append((lambda t, d=dim: torch.flip(t, (d,)), lambda t, d=dim: torch.flip(t, (d,))))
    assert len(views) == tta_passes(tta)
    return views


@lru_cache(maxsize=8)
def _load(weights: Path, mtime: float, device: str, precision: str, builder_target: str,
          channels_last: bool | str, compile: bool) -> LoadedModel:
    import torch
    from safetensors.torch import load_file

    card = load_card(weights)
    net = load_target(builder_target)(card)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - corrupt or not safetensors
        raise InputError(f"{weights}: cannot read weights ({exc})",
                         "the file must be safetensors, saved complete") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise InputError(f"{weights}: weights do not match the card "
                         f"({card.architecture}/{card.encoder}): {detail}",
                         "use the card the weights were saved with") from None
    net.eval().to(device)
    model = LoadedModel(card, net, device, _autocast_dtype(precision, device))
    if channels_last == "auto":
        channels_last = choose_channels_last(model, weights, _blank_window(card))
    set_channels_last(model, bool(channels_last))
    # One window through the network now: kernel selection and lazy initialisation
    # happen here, once per process, instead of inside the first batch of the first
    # input; and it tells how much memory a window needs (``batch_size: auto``).
    model.window_bytes, model.largest_buffer = _window_bytes(model)
    if compile:  # compiled at the first batch: of the size compile_for gives, if called
        model.net, model.compiled = torch.compile(net, dynamic=False), True
    return model


def load_model(weights: Path, device: str, precision: str, registry: Registry, *,
               channels_last: bool | str = False, compile: bool = False) -> LoadedModel:
    """The model at ``weights``, built once per process (and reloaded if the file changes).

    ``channels_last="auto"`` keeps the memory format the model runs faster in on this
    device: timed once, then remembered (:mod:`wfe_builtin.models.layout`).
    """
    if not weights.exists():
        raise InputError(f"{weights}: model weights not found",
                         "check the model path (the .safetensors beside its card)")
    card = load_card(weights)
    builder = registry.architecture(card.architecture).target
    # The process's first load imports torch and the architecture's library: without
    # the collector's full passes over what they create (wfe.collector). Only the
    # first: freezing again at a later input would keep any reference cycles the
    # inputs before it left for the collector.
    first = _load.cache_info().currsize == 0
    with collection_paused() if first else nullcontext():
        # Built on the torch thread, as every call of it will be (its warm-up and
        # layout timing included): one OpenMP team per process.
        return on_torch_thread(_load, weights, weights.stat().st_mtime,
                               resolve_device(device), precision, builder, channels_last,
                               compile)
