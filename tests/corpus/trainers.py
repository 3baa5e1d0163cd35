"""Small real trainings whose metric histories make up the detection corpus.

Tasks: modular arithmetic (a op b mod p, the grokking benchmark of Power et al., 2022),
composition in a symmetric group (S_p, p! classes), sparse parity (the parity of k of n random
+-1 bits from a fixed training sample; Barak et al., 2022), scikit-learn's bundled digits (an
Omnigrok-style task: few samples, large initialisation, MSE) and Gaussian blobs.
Models: an embedding MLP, a one-layer transformer and plain MLPs. Each run logs what a user's script
would: train/val loss and accuracy and the learning rate, every ``log_every`` epochs.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn

OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "sq": lambda a, b, p: (a * a + b * b) % p,
    "cube": lambda a, b, p: (a**3 + a * b) % p,
    # a / b = a * b^(p-2) mod p (Fermat's inverse); pairs with b = 0 are left out
    "div": lambda a, b, p: (a * torch.tensor([pow(i, p - 2, p) for i in range(p)])[b]) % p,
}


@dataclass(frozen=True)
class Spec:
    """One corpus run: task, model, optimiser, schedule and logging, as plain data."""

    name: str
    task: str = "modular"  # modular | perm | parity | digits | blobs
    op: str = "add"
    p: int = 53  # modulus (modular) or degree of the symmetric group (perm)
    frac: float = 0.4  # training fraction, or training samples if > 1 (digits, parity)
    bits: int = 40  # parity: input bits ...
    k: int = 3  # ... of which the label is the parity of the first k
    model: str = "mlp"  # mlp | transformer
    width: int = 64
    hidden: int = 256
    init_scale: float = 1.0
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    wd: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: str = "const"  # const | step:E1/E2:factor | cosine:period | warmup:W
    epochs: int = 3000
    batch: int = 0  # 0: full batch, one step per epoch
    log_every: int = 1
    seed: int = 0


def lr_at(spec: Spec, epoch: int) -> float:
    """The learning rate used during ``epoch`` (1-based)."""
    kind, *args = spec.schedule.split(":")
    if kind == "const":
        return spec.lr
    if kind == "step":
        steps = [int(x) for x in args[0].split("/")]
        factor = float(args[1])
        return spec.lr * factor ** sum(epoch >= s for s in steps)
    if kind == "cosine":
        period = int(args[0])
        pos = (epoch - 1) % period
        return spec.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * pos / period)))
    if kind == "warmup":
        return spec.lr * min(1.0, epoch / int(args[0]))
    raise ValueError(f"unknown schedule {spec.schedule!r}")


def lr_steps(spec: Spec) -> list[int]:
    """Epochs where the schedule jumps (step drops, warm restarts): scheduled confounds."""
    kind, *args = spec.schedule.split(":")
    if kind == "step":
        return [int(x) for x in args[0].split("/") if int(x) <= spec.epochs]
    if kind == "cosine":
        return list(range(int(args[0]) + 1, spec.epochs + 1, int(args[0])))
    return []


def _all_pairs(size: int) -> torch.Tensor:
    """Every (a, b) with a, b in range(size), one row each."""
    a, b = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], dim=1)


def _split(spec: Spec, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A seeded `frac` of the rows for training, the rest for validation."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(spec.seed))
    n = int(spec.frac * len(x))
    return x[order[:n]], y[order[:n]], x[order[n:]], y[order[n:]]


def _modular(spec: Spec) -> tuple[torch.Tensor, ...]:
    x = _all_pairs(spec.p)
    if spec.op == "div":
        x = x[x[:, 1] != 0]
    return _split(spec, x, OPS[spec.op](x[:, 0], x[:, 1], spec.p))


def _perm(spec: Spec) -> tuple[torch.Tensor, ...]:
    """All pairs (a, b) of S_p, labelled with the index of the composition a o b."""
    perms = list(itertools.permutations(range(spec.p)))
    index = {perm: i for i, perm in enumerate(perms)}
    table = torch.tensor([[index[tuple(a[j] for j in b)] for b in perms] for a in perms])
    x = _all_pairs(len(perms))
    return _split(spec, x, table[x[:, 0], x[:, 1]])


def _parity(spec: Spec) -> tuple[torch.Tensor, ...]:
    """`frac` training samples and 5,000 validation samples of n random +-1 bits."""
    gen = torch.Generator().manual_seed(spec.seed)
    n = int(spec.frac)
    x = torch.randint(0, 2, (n + 5000, spec.bits), generator=gen).float() * 2 - 1
    y = ((x[:, : spec.k] < 0).sum(1) % 2).long()
    return x[:n], y[:n], x[n:], y[n:]


def classes_of(spec: Spec) -> int:
    """How many classes the task has (chance accuracy is one over it)."""
    return {"modular": spec.p, "perm": math.factorial(spec.p), "parity": 2}.get(spec.task, 10)


def _digits(spec: Spec) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(spec.seed))
    n = int(spec.frac) if spec.frac > 1 else int(spec.frac * len(x))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def _blobs(spec: Spec) -> tuple[torch.Tensor, ...]:
    """Ten Gaussian clusters in 20 dimensions, overlapping: a plain, noisy classification."""
    gen = torch.Generator().manual_seed(spec.seed)
    centers = torch.randn(10, 20, generator=gen) * 0.8
    y = torch.randint(0, 10, (30000,), generator=gen)
    x = centers[y] + torch.randn(30000, 20, generator=gen)
    return x[:10000], y[:10000], x[10000:], y[10000:]


class EmbedMLP(nn.Module):
    """Embed both operands, concatenate, one hidden ReLU layer."""

    def __init__(self, p: int, width: int, hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(p, width)
        self.net = nn.Sequential(nn.Linear(2 * width, hidden), nn.ReLU(), nn.Linear(hidden, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.emb(x).flatten(1))


class OneLayerTransformer(nn.Module):
    """Tokens (a, b, =), one pre-norm attention + MLP block, read out at '='."""

    def __init__(self, p: int, width: int) -> None:
        super().__init__()
        self.p = p
        self.emb = nn.Embedding(p + 1, width)
        self.pos = nn.Parameter(torch.randn(3, width) * 0.02)
        self.block = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.out = nn.Linear(width, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eq = torch.full((len(x), 1), self.p, dtype=x.dtype)
        h = self.block(self.emb(torch.cat([x, eq], 1)) + self.pos)
        return self.out(h[:, -1])


def _model(spec: Spec) -> nn.Module:
    if spec.task == "blobs":
        model = nn.Linear(20, 10)
    elif spec.task == "digits":
        model = nn.Sequential(
            nn.Linear(64, spec.hidden),
            nn.ReLU(),
            nn.Linear(spec.hidden, spec.hidden),
            nn.ReLU(),
            nn.Linear(spec.hidden, 10),
        )
    elif spec.task == "parity":
        model = nn.Sequential(
            nn.Linear(spec.bits, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, 2)
        )
    elif spec.model == "transformer":
        model = OneLayerTransformer(classes_of(spec), spec.width)
    else:
        model = EmbedMLP(classes_of(spec), spec.width, spec.hidden)
    if spec.init_scale != 1.0:
        with torch.no_grad():
            for prm in model.parameters():
                prm.mul_(spec.init_scale)
    return model


def _optimizer(spec: Spec, model: nn.Module) -> torch.optim.Optimizer:
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=spec.lr, weight_decay=spec.wd, betas=spec.betas
        )
    if spec.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=spec.lr, betas=spec.betas)
    return torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, weight_decay=spec.wd)


def _loss_fn(spec: Spec, classes: int):
    if spec.task == "digits":  # Omnigrok: MSE on one-hot targets
        return lambda out, y: nn.functional.mse_loss(out, nn.functional.one_hot(y, classes).float())
    return nn.functional.cross_entropy


def train(spec: Spec) -> tuple[pd.DataFrame, dict]:
    """Train one run; its logged history (index = epoch, 1-based) and facts about it."""
    torch.manual_seed(spec.seed)
    tasks = {"digits": _digits, "blobs": _blobs, "perm": _perm, "parity": _parity}
    xtr, ytr, xva, yva = tasks.get(spec.task, _modular)(spec)
    classes = classes_of(spec)
    model = _model(spec)
    opt = _optimizer(spec, model)
    lossf = _loss_fn(spec, classes)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    rows = []
    started = time.perf_counter()
    for epoch in range(1, spec.epochs + 1):
        lr = lr_at(spec, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(len(xtr), generator=gen) if spec.batch else None
        size = spec.batch or len(xtr)
        tot_loss, tot_correct = 0.0, 0
        for i in range(0, len(xtr), size):
            idx = order[i : i + size] if order is not None else slice(None)
            xb, yb = xtr[idx], ytr[idx]
            out = model(xb)
            loss = lossf(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += float(loss.detach()) * len(yb)
            tot_correct += int((out.detach().argmax(1) == yb).sum())
        if epoch % spec.log_every and epoch not in (1, spec.epochs):
            continue
        model.eval()
        with torch.no_grad():
            vout = model(xva)
            rows.append(
                {
                    "epoch": epoch,
                    "train_loss": tot_loss / len(xtr),
                    "train_acc": tot_correct / len(xtr),
                    "val_loss": float(lossf(vout, yva)),
                    "val_acc": float((vout.argmax(1) == yva).float().mean()),
                    "lr": lr,
                }
            )
    facts = {
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()},
        "classes": classes,
        "train_size": len(xtr),
        "lr_steps": lr_steps(spec),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return pd.DataFrame(rows).set_index("epoch"), facts
