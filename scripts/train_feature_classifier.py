"""Train the shipped feature classifiers on the fixed train split of digits / MNIST-5k.

Writes ``flowpost/assets/classifier_<dataset>.safetensors`` (weights) and ``.json``
(architecture, accuracies, training settings) and prints the held-out accuracy. Runs on one
CPU thread in about a minute (digits) to a few minutes (mnist5k).

    .venv/bin/python scripts/train_feature_classifier.py --dataset digits
    .venv/bin/python scripts/train_feature_classifier.py --dataset mnist5k
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from flowpost.data.images import load_image_dataset
from flowpost.eval.features import asset_paths, build_from_meta

SETTINGS = {
    # small channels at 28x28 keep the first (full-resolution) convs cheap on one CPU thread
    "digits": {"channels": [32, 64, 64], "feature_dim": 128, "epochs": 40, "shift": 1},
    "mnist5k": {"channels": [16, 32, 64], "feature_dim": 128, "epochs": 15, "shift": 2},
}


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (padding with background -1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    out = torch.empty_like(x)
    for i in range(2 * max_shift + 1):
        for j in range(2 * max_shift + 1):
            m = (dy == i) & (dx == j)
            if bool(m.any()):
                out[m] = padded[m, :, i : i + h, j : j + w]
    return out


def evaluate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    net.train()
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    cfg = SETTINGS[args.dataset]
    epochs = args.epochs or int(cfg["epochs"])  # type: ignore[call-overload]
    train, held = load_image_dataset(args.dataset)
    train_y, held_y = train.cond, held.cond
    assert train_y is not None and held_y is not None  # image datasets are labelled
    meta = {
        "dataset": args.dataset,
        "shape": list(train.spec.shape),
        "num_classes": 10,
        "channels": cfg["channels"],
        "feature_dim": cfg["feature_dim"],
    }
    net = build_from_meta(meta)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = epochs * ((len(train) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    start = time.time()
    for epoch in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for s in range(0, len(train), args.batch):
            idx = perm[s : s + args.batch]
            x = random_shift(train.x[idx], int(cfg["shift"]), g)  # type: ignore[call-overload]
            loss = F.cross_entropy(net(x), train_y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            print(
                f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} "
                f"held-out acc {evaluate(net, held.x, held_y):.4f} "
                f"({time.time() - start:.0f}s)",
                flush=True,
            )
    net.eval()
    meta.update(
        heldout_accuracy=round(evaluate(net, held.x, held_y), 4),
        train_accuracy=round(evaluate(net, train.x, train_y), 4),
        n_train=len(train),
        n_heldout=len(held),
        epochs=epochs,
        seed=args.seed,
        train_seconds=round(time.time() - start, 1),
        torch=torch.__version__,
        parameters=sum(p.numel() for p in net.parameters()),
    )
    weights, meta_path = asset_paths(args.dataset)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta))
    print(f"wrote {weights} ({weights.stat().st_size / 1e3:.0f} kB) and {meta_path}")


if __name__ == "__main__":
    main()
