"""Train the shipped demo model on synthetic slides (reproducible: fixed seeds).

    python -m wfe_builtin.models.train_demo workflows/models/demo [--steps 600]
    python -m wfe_builtin.models.train_demo workflows/models/demo --evaluate

Writes ``demo.safetensors`` and its card ``demo.yaml``, with the Dice measured
on held-out synthetic slides (seeds never used for training), loading the saved
file as the ``segment`` stage does and stitching with the engine's own code.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from wfe_builtin.synthetic.slide import CLASSES, SyntheticSlide

__all__ = ["dice_scores", "main", "segment_array"]

MPP = 1.0            # the model works at 1 µm per pixel
SLIDE_MPP = 0.5      # synthetic slides are generated at 0.5 µm (level 0)
PATCH = 256
CARD = {
    "name": "demo-tissue",
    "architecture": "Unet",
    "encoder": "tu-mobilenetv3_small_100",
    "in_channels": 3,
    "classes": list(CLASSES),
    "colors": ["#000000", "#2ca02c", "#ffd700"],
    "normalize": {"scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "mpp": MPP,
    "window": 512,
    "params": {"decoder_channels": [64, 32, 16, 16, 8]},
}
TRAIN_SEEDS = range(100, 140)
HELDOUT_SEEDS = (1000, 1001, 1002)


def _jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _sample(rng: np.random.Generator, slides: list[SyntheticSlide]) -> tuple[np.ndarray, ...]:
    slide = slides[rng.integers(len(slides))]
    d = MPP / SLIDE_MPP
    w, h = int(slide.width / d), int(slide.height / d)
    if rng.random() < 0.75 and slide.lobes:  # mostly near tissue, some background
        lobe = slide.lobes[rng.integers(len(slide.lobes))]
        cx = lobe.cx / d + rng.normal(0, lobe.a / d * 0.7)
        cy = lobe.cy / d + rng.normal(0, lobe.b / d * 0.7)
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    x = int(np.clip(cx - PATCH / 2, 0, w - PATCH))
    y = int(np.clip(cy - PATCH / 2, 0, h - PATCH))
    rgb, labels = slide.render(x, y, PATCH, PATCH, d)
    rgb = _jpeg(rgb, int(rng.integers(75, 96)))
    # Stain and brightness variation, rotations by 90° and flips.
    rgb = np.clip(rgb * rng.uniform(0.9, 1.1, 3) + rng.normal(0, 6), 0, 255)
    k = int(rng.integers(4))
    rgb, labels = np.rot90(rgb, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        rgb, labels = rgb[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)), np.ascontiguousarray(labels)


def segment_array(predict: Any, rgb: np.ndarray, classes: int, window: int = 512) -> np.ndarray:
    """Labels of an in-memory image (c, y, x) with the engine's stitching."""
    import dask.array as da

    from wfe.stitch import sliding_window_map

    probs = sliding_window_map(da.from_array(rgb, chunks=(rgb.shape[0], 1024, 1024)), predict,
                               out_channels=classes, window=window, overlap=64)
    return np.asarray(probs.argmax(axis=0).compute(scheduler="synchronous"))


def dice_scores(pred: np.ndarray, truth: np.ndarray, classes: int) -> list[float]:
    """Dice of each class over whole images."""
    out = []
    for c in range(classes):
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out.append(float(2 * (p & t).sum() / denom) if denom else 1.0)
    return out


def main(argv: list[str] | None = None) -> None:
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from wfe_builtin.models.card import ModelCard

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output stem, e.g. workflows/models/demo")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--evaluate", action="store_true",
                    help="only measure an existing model on the held-out slides")
    args = ap.parse_args(argv)
    if args.evaluate:
        evaluate(args.out)
        return

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    slides = [SyntheticSlide(4096, 4096, mpp=SLIDE_MPP, seed=s) for s in TRAIN_SEEDS]
    card = ModelCard.model_validate(CARD)
    net = smp.create_model(card.architecture, encoder_name=card.encoder, encoder_weights=None,
                           in_channels=card.in_channels, classes=len(card.classes), **card.params)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    mean = torch.tensor(card.normalize.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.normalize.std).view(1, -1, 1, 1)
    t0 = time.time()
    net.train()
    for step in range(args.steps):
        xs, ys = zip(*(_sample(rng, slides) for _ in range(args.batch)), strict=True)
        x = (torch.from_numpy(np.stack(xs)).float() / 255 - mean) / std
        y = torch.from_numpy(np.stack(ys)).long()
        logits = net(x)
        probs = logits.softmax(1)
        onehot = F.one_hot(y, len(card.classes)).permute(0, 3, 1, 2).float()
        inter = (probs * onehot).sum((0, 2, 3))
        soft_dice = 1 - ((2 * inter + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1))
        loss = F.cross_entropy(logits, y) + soft_dice[1:].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.time() - t0:.0f} s", flush=True)
    train_seconds = time.time() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Float weights are stored as float16 (half the size; loading casts them back).
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(args.out.with_suffix(".safetensors")))
    card_data = dict(CARD, training={
        "script": "python -m wfe_builtin.models.train_demo " + str(args.out),
        "data": f"synthetic slides, seeds {TRAIN_SEEDS.start}-{TRAIN_SEEDS.stop - 1}, "
                f"{PATCH} px patches at {MPP} µm, JPEG q75-95, rot90/flip, colour jitter",
        "steps": args.steps, "batch": args.batch, "optimizer": "AdamW one-cycle",
        "lr": args.lr, "seconds": round(train_seconds), "weights_dtype": "float16",
        "torch": str(torch.__version__), "smp": str(smp.__version__),
    })
    _write_card(args.out.with_suffix(".yaml"), card_data)
    size = args.out.with_suffix(".safetensors").stat().st_size
    print(f"wrote {args.out}.safetensors ({size / 1e6:.1f} MB) and {args.out}.yaml "
          f"in {math.ceil(train_seconds)} s")
    evaluate(args.out)


def _write_card(path: Path, data: dict[str, Any]) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = None
    with open(path, "w", encoding="utf-8") as fh:
        yaml.dump(data, fh)


def evaluate(stem: Path) -> dict[str, Any]:
    """Dice of the saved model on held-out slides, loaded the way ``segment`` loads it;
    the figures are written into the card's ``metrics``."""
    from ruamel.yaml import YAML

    from wfe.plugins import load_registry
    from wfe_builtin.models.loader import load_model

    weights = stem.with_suffix(".safetensors")
    model = load_model(weights, "cpu", "fp32", load_registry(autoload=False))
    classes = len(model.card.classes)
    per_slide = []
    for seed in HELDOUT_SEEDS:
        slide = SyntheticSlide(4096, 4096, mpp=SLIDE_MPP, seed=seed)
        d = MPP / SLIDE_MPP
        rgb, truth = slide.render(0, 0, int(slide.width / d), int(slide.height / d), d)
        rgb = np.ascontiguousarray(_jpeg(rgb).transpose(2, 0, 1))
        pred = segment_array(model.predict, rgb, classes, model.card.window)
        per_slide.append(dice_scores(pred, truth, classes))
    dice = np.mean(per_slide, axis=0)
    metrics = {"dice_" + name: round(float(v), 4) for name, v in zip(CLASSES, dice, strict=True)}
    metrics["dice_foreground_mean"] = round(float(dice[1:].mean()), 4)
    metrics["heldout"] = f"synthetic slides, seeds {list(HELDOUT_SEEDS)}, 2048 × 2048 px at 1 µm"
    print(json.dumps(metrics, indent=2))
    card_path = stem.with_suffix(".yaml")
    data = YAML(typ="safe", pure=True).load(card_path.read_text(encoding="utf-8"))
    data["metrics"] = metrics
    _write_card(card_path, data)
    return metrics


if __name__ == "__main__":
    main()
