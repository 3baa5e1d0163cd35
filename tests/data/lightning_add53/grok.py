"""How `metrics.csv.gz` was made: a real PyTorch Lightning run logged by Lightning's own
MLFlowLogger (not by this project), kept as a test fixture of a foreign trainer's layout.

(a + b) mod 53, 40 % of the pairs for training, embedding MLP, AdamW (weight decay 1),
minibatches of 256 (5 optimizer steps an epoch), 4,000 epochs, one CPU thread (~12 minutes).
Lightning logs every key against the global step, `train_loss`/`train_acc` both per step and
per epoch (`_step`/`_epoch`), `epoch` with every call, and the LR as `lr-AdamW`.

    pip install lightning && GROK_URI=sqlite:///grok.db python tests/data/lightning_add53/grok.py

The fixture is that run's metric rows (key, step, value, ms since its first row).
"""

import os

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import MLFlowLogger
from torch.utils.data import DataLoader, TensorDataset

P, BATCH, EPOCHS = 53, 256, 4000


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
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("train_acc", acc, on_step=True, on_epoch=True)
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
    logger = MLFlowLogger(experiment_name="lightning-grok", tracking_uri=os.environ["GROK_URI"])
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
        callbacks=[LearningRateMonitor(logging_interval="epoch")],
        logger=logger,
    )
    trainer.fit(
        ModAdd(),
        DataLoader(train, batch_size=BATCH, shuffle=True),
        DataLoader(val, batch_size=len(val)),
    )
    print("run", logger.run_id)
