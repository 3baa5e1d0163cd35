"""How `metrics.csv.gz` was made: a real PyTorch Lightning run logged by MLflow's own
autologging (`mlflow.pytorch.autolog()`, no MLFlowLogger, not by this project), kept as a test
fixture of that layout.

(a + b) mod 53, 40 % of the pairs for training, embedding MLP, AdamW (weight decay 1,
lr 1e-3, betas (0.9, 0.98)), minibatches of 256 (5 optimizer steps an epoch), validation on
the other 60 % in one batch after every epoch, 4,000 epochs, one CPU thread (~7 minutes).
Same data split, model and seed as tests/data/lightning_add53/grok.py. Train accuracy passes
0.99 at epoch 83, validation accuracy 0.1 at 1,534, 0.9 at 2,416 and 0.99 at 2,763.

The module logs `train_loss`/`train_acc` (on_step=False, on_epoch=True) and `val_loss`/
`val_acc`; MLflow's Lightning callback writes each of the four once an epoch from
`trainer.callback_metrics`, against the epoch (0-based, `pl_module.current_epoch`, 0-3,999),
not the global step; there is no `epoch` key and no LR key (4 x 4,000 rows).

    pip install lightning
    MLFLOW_TRACKING_URI=sqlite:///grok.db python tests/data/lightning_autolog_add53/grok_autolog.py

The fixture is that run's metric rows (key, step, value, ms since its first row).
"""

import os

import lightning as L
import mlflow
import torch
from torch.utils.data import DataLoader, TensorDataset

P, BATCH = 53, 256
EPOCHS = int(os.environ.get("GROK_EPOCHS", "4000"))


def make_data(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], 1)
    y = (x[:, 0] + x[:, 1]) % P
    perm = torch.randperm(P * P, generator=torch.Generator().manual_seed(seed))
    n = int(0.4 * P * P)
    return TensorDataset(x[perm[:n]], y[perm[:n]]), TensorDataset(x[perm[n:]], y[perm[n:]])


class ModAdd(L.LightningModule):
    def __init__(self, dim: int = 64, hidden: int = 256, lr: float = 1e-3, wd: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        self.emb = torch.nn.Embedding(P, dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(2 * dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, P)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.emb(x).flatten(1))

    def _step(self, batch):
        x, y = batch
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss, (logits.argmax(1) == y).float().mean()

    def training_step(self, batch, batch_idx):
        loss, acc = self._step(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc = self._step(batch)
        self.log("val_loss", loss, on_epoch=True)
        self.log("val_acc", acc, on_epoch=True)

    def configure_optimizers(self):
        h = self.hparams
        return torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.wd, betas=(0.9, 0.98))


if __name__ == "__main__":
    torch.set_num_threads(1)
    L.seed_everything(0)
    train, val = make_data(0)
    mlflow.set_experiment("lightning-autolog-grok")
    mlflow.pytorch.autolog()
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        logger=False,
    )
    with mlflow.start_run(run_name="grok-lightning-autolog") as run:
        trainer.fit(
            ModAdd(),
            DataLoader(train, batch_size=BATCH, shuffle=True),
            DataLoader(val, batch_size=len(val)),
        )
    print("run", run.info.run_id)
