"""How `metrics.csv.gz` was made: a real Hugging Face Trainer run logged by transformers' own
MLflowCallback (`report_to=["mlflow"]`, not by this project), kept as a test fixture.

(a + b) mod 53, 40 % of the pairs for training, embedding MLP, AdamW (weight decay 1),
minibatches of 256 (5 optimizer steps an epoch), 5,000 epochs, evaluated and logged every 10
steps, one CPU thread (~5 minutes). HF logs every key against the global step, the training
loss as `loss`, the LR as `learning_rate`, `epoch` with each log, and end-of-run summaries
(`train_loss`, `train_runtime`, ...) once.

    pip install transformers accelerate
    MLFLOW_TRACKING_URI=sqlite:///grok.db python tests/data/hf_add53/grok_hf.py

The fixture is that run's metric rows (key, step, value, ms since its first row).
"""

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

P, EPOCHS, EVERY = 53, 5000, 10


class ModAdd(Dataset):
    def __init__(self, pairs: list[tuple[int, int]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        a, b = self.pairs[i]
        return {"input_ids": torch.tensor([a, b]), "labels": (a + b) % P}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb_a, self.emb_b = nn.Embedding(P, 64), nn.Embedding(P, 64)
        self.net = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, P))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        h = torch.cat([self.emb_a(input_ids[:, 0]), self.emb_b(input_ids[:, 1])], dim=-1)
        out = {"logits": self.net(h)}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(out["logits"], labels)
        return out


def accuracy(ev) -> dict:
    return {"accuracy": float((np.argmax(ev.predictions, -1) == ev.label_ids).mean())}


if __name__ == "__main__":
    torch.set_num_threads(1)
    pairs = [(a, b) for a in range(P) for b in range(P)]
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    n = int(0.4 * len(pairs))
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir="grok-hf-out",
        per_device_train_batch_size=256,
        per_device_eval_batch_size=2048,
        learning_rate=1e-3,
        weight_decay=1.0,
        adam_beta2=0.98,
        lr_scheduler_type="constant",
        num_train_epochs=EPOCHS,
        eval_strategy="steps",
        eval_steps=EVERY,
        logging_strategy="steps",
        logging_steps=EVERY,
        save_strategy="no",
        report_to=["mlflow"],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        run_name="grok-hf",
    )
    train = ModAdd([pairs[i] for i in perm[:n]])
    val = ModAdd([pairs[i] for i in perm[n:]])
    Trainer(
        model=MLP(), args=args, train_dataset=train, eval_dataset=val, compute_metrics=accuracy
    ).train()
