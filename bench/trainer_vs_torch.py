"""Seconds per epoch of the same MLP trained by fastopt's Trainer and by PyTorch, on this CPU
or on the GPU.

    python bench/trainer_vs_torch.py [--epochs 3] [--device cuda]

Same layer sizes, ReLU, dropout 0.1, AdamW (lr 1e-3, weight decay 1e-2), softmax
cross-entropy, batch size and shuffling per epoch; float32; torch with its default threads.
Two problems: scikit-learn's digits (64-128-10, batch 32) and a synthetic one (100,000
samples, 256-512-512-10, batch 256). The two take turns, epoch by epoch, in this one process
(so a slow spell of the machine falls on both); the first epoch of each (compilation, warm-up)
is left out. Prints the median epoch time of each and the ratio.

With ``--device cuda`` both train on the GPU (fastopt with CuPy and its CUDA kernels, torch
with fused AdamW), the data copied there once. fastopt's Trainer brings each batch's loss and
accuracy back to the host (it stops on a NaN loss at once); the torch loop does not, and is
synchronised once per epoch, which favours torch.
"""

import argparse
import time

import numpy as np

import fastopt


def synthetic(n=100_000, features=256, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, features)).astype(np.float32)
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(0, 2, (n, features)).astype(np.float32)), y


def problem(name, samples=100_000):
    """``(x, y, sizes, batch)`` of ``"digits"`` (scikit-learn's, scaled to [0, 1]) or
    ``"synthetic"`` (``samples`` rows)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return (digits.data / 16).astype(np.float32), digits.target, (64, 128, 10), 32
    return (*synthetic(samples), (256, 512, 512, 10), 256)


def fastopt_epochs(x, y, sizes, batch, device):
    """A generator: each ``next`` trains one more epoch and gives its seconds."""
    model = fastopt.MLP(sizes, dropout=0.1, seed=0, device=device)
    optimizer = fastopt.AdamW(model.params, lr=1e-3, weight_decay=1e-2)
    trainer = fastopt.Trainer(model, optimizer, fastopt.losses.softmax_cross_entropy, progress=False)
    epoch = 0
    while True:
        epoch += 1
        start = time.perf_counter()
        trainer.fit(x, y, epochs=epoch, batch_size=batch)
        yield time.perf_counter() - start


def torch_epochs(x, y, sizes, batch, device):
    """A generator, as :func:`fastopt_epochs`."""
    import torch

    torch.manual_seed(0)
    layers = []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers += [torch.nn.ReLU(), torch.nn.Dropout(0.1)]
    model = torch.nn.Sequential(*layers).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)
    loss = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    generator = np.random.default_rng(0)
    while True:
        start = time.perf_counter()
        order = torch.from_numpy(generator.permutation(len(x))).to(device)
        for i in range(0, len(x), batch):
            index = order[i:i + batch]
            optimizer.zero_grad(set_to_none=True)
            value = loss(model(xt[index]), yt[index])
            value.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        yield time.perf_counter() - start


def taking_turns(x, y, sizes, batch, epochs, device):
    """Median seconds per epoch of fastopt and of torch, the two alternating epoch by epoch
    (the first epoch of each left out)."""
    ours, theirs = fastopt_epochs(x, y, sizes, batch, device), torch_epochs(x, y, sizes, batch, device)
    times = np.array([(next(ours), next(theirs)) for _ in range(epochs)])
    return float(np.median(times[1:, 0])), float(np.median(times[1:, 1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each (the first is left out)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first is left out), got {args.epochs}")
    problems = [("digits 64-128-10, batch 32", *problem("digits")),
                ("synthetic 100k, 256-512-512-10, batch 256", *problem("synthetic"))]
    for name, x, y, sizes, batch in problems:
        ours, theirs = taking_turns(x, y, sizes, batch, args.epochs, args.device)
        print(f"{args.device}: {name:<44} fastopt {ours:7.3f} s/epoch   torch {theirs:7.3f} s/epoch   "
              f"torch/fastopt x{theirs / ours:.2f}", flush=True)


if __name__ == "__main__":
    main()
