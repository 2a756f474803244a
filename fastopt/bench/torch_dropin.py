"""fastopt.torch against torch.optim on a small model: an MLP of 41,642 float32 parameters in 8
tensors (64-192-128-32-10), AdamW. ``optimizer.step()`` alone, and a whole training step
(forward, backward, ``clip_grad_norm_``, step, ``OneCycleLR``) on a batch of 64. Used by
``bench/torch_dropin.py`` and the pytest-benchmark suite."""

import torch

#: Layer widths of the model.
SIZES = (64, 192, 128, 32, 10)
BATCH = 64


def model(seed=0):
    torch.manual_seed(seed)
    layers = []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


class Case:
    """``implementation``: ``"fastopt"`` (fastopt.torch.AdamW) or ``"torch"`` (fused AdamW);
    ``kind``: ``"step"`` or ``"training_step"``."""

    def __init__(self, kind, implementation, device="cpu"):
        import fastopt.torch

        self.model = model().to(device)
        cls = fastopt.torch.AdamW if implementation == "fastopt" else torch.optim.AdamW
        options = {} if implementation == "fastopt" else {"fused": True}
        self.optimizer = cls(self.model.parameters(), lr=1e-3, **options)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=1e-2, total_steps=10**9)
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(BATCH, SIZES[0], generator=generator).to(device)
        self.y = torch.randint(0, SIZES[-1], (BATCH,), generator=generator).to(device)
        self._training_step()  # gradients exist; the optimizer has stepped once
        self.step = self.optimizer.step if kind == "step" else self._training_step

    def _training_step(self):
        self.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()


def parameter_count():
    return sum(p.numel() for p in model().parameters()), len(list(model().parameters()))
