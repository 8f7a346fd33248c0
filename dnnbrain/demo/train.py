"""Train the demo networks on generated shape images: :class:`~dnnbrain.demo.net.ShapeCNN`
(``ShapeNet``) or :func:`~dnnbrain.demo.vit.shape_vit` (``ShapeViT``).

Run as::

    python -m dnnbrain.demo.train --out dnnbrain/data/shapenet.pth
    python -m dnnbrain.demo.train --arch vit --epochs 30 --lr 1e-3 \
        --out dnnbrain/data/shapevit.pth

The training set is generated in memory from ``--seed``, the validation set from
``--seed + 1``; neither touches the test seed (12345) used by the test suite. The saved
file is a float32 ``state_dict`` readable with ``torch.load(path, weights_only=True)``.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..dnn.zoo import get_spec
from .net import ShapeCNN
from .shapes import make_dataset
from .vit import shape_vit

#: The demo architectures :func:`train_model` trains.
ARCHS = ("cnn", "vit")

__all__ = ["normalise", "evaluate", "train_model", "main"]

log = logging.getLogger(__name__)
_SPEC = get_spec("ShapeNet")


def normalise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn uint8 images into the network's input.

    Parameters
    ----------
    images : numpy.ndarray or torch.Tensor
        ``(N, H, W, 3)`` uint8 RGB images.

    Returns
    -------
    torch.Tensor
        ``(N, 3, H, W)`` float32, ``(x / 255 - mean) / std`` with the ShapeNet constants
        of :data:`dnnbrain.dnn.zoo.NETWORKS` (mean 0.5, std 0.25).

    Raises
    ------
    ValueError
        If ``images`` is not 4-D with 3 channels last.
    """
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"`images` must have shape (N, H, W, 3), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(_SPEC.mean).view(1, 3, 1, 1)
    std = torch.tensor(_SPEC.std).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 500) -> float:
    """Classification accuracy of ``model`` on uint8 images.

    Parameters
    ----------
    model : torch.nn.Module
        Network mapping normalised ``(N, 3, H, W)`` input to ``(N, C)`` logits.
    images : numpy.ndarray
        ``(N, H, W, 3)`` uint8.
    labels : numpy.ndarray
        ``(N,)`` integer class indices.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    float
        Fraction of images whose arg-max logit equals the label. The model is left in
        eval mode.
    """
    model.eval()
    preds = [model(normalise(images[i:i + batch_size])).argmax(1)
             for i in range(0, len(images), batch_size)]
    return float((torch.cat(preds).numpy() == np.asarray(labels)).mean())


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 90-degree rotation and horizontal flip of a whole batch (labels unchanged)."""
    k = int(torch.randint(4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def train_model(images: np.ndarray, labels: np.ndarray, *, epochs: int = 12,
                batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                val: tuple[np.ndarray, np.ndarray] | None = None,
                arch: str = "cnn") -> nn.Module:
    """Train a fresh demo network with a one-cycle (warm-up, cosine decay) schedule:
    :class:`ShapeCNN` with Adam, or the demo ViT with AdamW (weight decay 0.05).

    Parameters
    ----------
    images : numpy.ndarray
        ``(N, 64, 64, 3)`` uint8 training images.
    labels : numpy.ndarray
        ``(N,)`` integer class indices.
    epochs : int
        Passes over the training set.
    batch_size : int
        Images per optimisation step.
    lr : float
        Peak learning rate.
    seed : int
        Seeds weight initialisation, shuffling and augmentation.
    val : tuple of numpy.ndarray or None
        ``(images, labels)`` whose accuracy is logged after every epoch.
    arch : {'cnn', 'vit'}
        Which demo network.

    Returns
    -------
    torch.nn.Module
        The trained network, in eval mode.
    """
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {list(ARCHS)}, got {arch!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ShapeCNN() if arch == "cnn" else shape_vit()
    data = torch.as_tensor(images)
    target = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if arch == "cnn" else
           torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(data), batch_size):
            idx = order[i:i + batch_size]
            x, y = _augment(normalise(data[idx]), gen), target[idx]
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((out.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(idx)
        msg = (f"epoch {epoch}/{epochs}: loss {loss_sum / total:.4f}, "
               f"train acc {correct / total:.4f}")
        if val is not None:
            msg += f", val acc {evaluate(model, *val):.4f}"
        log.info("%s (%.0f s)", msg, time.perf_counter() - start)
    model.eval()
    return model


def _number(kind: type, minimum: float = 0.0, strict: bool = True):
    """argparse type: a ``kind`` (int or float) above ``minimum`` (or equal, if not strict)."""
    def parse(text: str):
        value = kind(text)
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    """Command-line interface of :func:`main`."""
    p = argparse.ArgumentParser(prog="python -m dnnbrain.demo.train",
                                description="Train a dnnbrain demo network (ShapeCNN "
                                            "or ShapeViT) on generated shape images.")
    p.add_argument("--arch", choices=ARCHS, default="cnn",
                   help="cnn: ShapeNet (ShapeCNN); vit: ShapeViT (default cnn)")
    p.add_argument("--out", type=Path, default=Path("dnnbrain/data/shapenet.pth"),
                   help="output state_dict file (default: %(default)s)")
    p.add_argument("--seed", type=_number(int, 0, strict=False), default=0,
                   help="training-set and torch seed; validation uses seed+1 (default 0)")
    p.add_argument("--epochs", type=_number(int), default=12)
    p.add_argument("--n-train", type=_number(int), default=24000)
    p.add_argument("--n-val", type=_number(int), default=1000)
    p.add_argument("--batch-size", type=_number(int), default=64)
    p.add_argument("--lr", type=_number(float), default=2e-3)
    p.add_argument("--threads", type=_number(int), default=2,
                   help="torch CPU threads (default 2)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Generate data, train, validate and save the weights.

    Parameters
    ----------
    argv : sequence of str or None
        Command-line arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    int
        Exit status, 0 on success.
    """
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        start = time.perf_counter()
        images, labels, _, _ = make_dataset(args.n_train, args.seed)
        val = make_dataset(args.n_val, args.seed + 1)[:2]
        log.info("generated %d training and %d validation images (seeds %d, %d) in %.0f s",
                 args.n_train, args.n_val, args.seed, args.seed + 1,
                 time.perf_counter() - start)
        model = train_model(images, labels, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, val=val, arch=args.arch)
        acc = evaluate(model, *val)
        state = {k: v.detach().to(torch.float32).contiguous().clone()
                 for k, v in model.state_dict().items()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, args.out)
        log.info("validation accuracy %.4f; saved %s (%d bytes) after %.0f s", acc, args.out,
                 args.out.stat().st_size, time.perf_counter() - start)
    finally:  # leave the caller's torch settings as they were
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
