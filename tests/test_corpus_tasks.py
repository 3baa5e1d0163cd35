"""The corpus's task families are what their names say, and the labelling rule reads any
number of classes: a group's composition table, sparse parity's labels, chance 0.5."""

from __future__ import annotations

import math

import pandas as pd
import torch
from label import label
from trainers import Spec, _parity, _perm, classes_of


def test_the_perm_task_is_composition_in_the_symmetric_group():
    xtr, ytr, xva, yva = _perm(Spec(name="s4", task="perm", p=4, frac=0.5, seed=3))
    x, y = torch.cat([xtr, xva]), torch.cat([ytr, yva])
    assert len(x) == 24 * 24 and len(xtr) == 24 * 12
    table = torch.full((24, 24), -1)
    table[x[:, 0], x[:, 1]] = y
    assert (table >= 0).all()  # every pair once, split between training and validation
    assert all(sorted(row.tolist()) == list(range(24)) for row in table)  # a Latin square
    assert all(sorted(col.tolist()) == list(range(24)) for col in table.T)
    identity = [e for e in range(24) if table[e].tolist() == list(range(24))]
    assert len(identity) == 1 and table[:, identity[0]].tolist() == list(range(24))
    triples = torch.randint(0, 24, (200, 3), generator=torch.Generator().manual_seed(0))
    for a, b, c in triples.tolist():  # associative: (a b) c = a (b c)
        assert table[table[a, b], c] == table[a, table[b, c]]
    assert not torch.equal(table, table.T)  # S4 is not abelian
    assert classes_of(Spec(name="s5", task="perm", p=5)) == math.factorial(5)


def test_sparse_parity_labels_are_the_parity_of_the_first_k_bits():
    spec = Spec(name="par", task="parity", bits=12, k=3, frac=300, seed=5)
    xtr, ytr, xva, yva = _parity(spec)
    assert xtr.shape == (300, 12) and xva.shape == (5000, 12)
    for x, y in ((xtr, ytr), (xva, yva)):
        assert set(x.unique().tolist()) == {-1.0, 1.0}
        assert torch.equal(y, (x[:, :3].prod(1) < 0).long())  # an odd count of -1s is class 1
        assert not torch.equal(y, (x[:, 3:6].prod(1) < 0).long())  # other bits do not decide
    assert 0.4 < float(yva.float().mean()) < 0.6
    assert classes_of(spec) == 2


def _run(val_acc: list[float]) -> pd.DataFrame:
    epochs = range(1, len(val_acc) + 1)
    return pd.DataFrame({"train_acc": 1.0, "val_acc": val_acc}, index=pd.Index(epochs))


def test_the_label_needs_half_the_room_above_chance_whatever_the_chance():
    plateau = [0.5] * 200
    grokked = label(_run(plateau + [0.85] * 100), classes=2, lr_steps=[])
    assert grokked["cls"] == "grokking" and grokked["window"] == [200.0, 201.0]
    assert label(_run(plateau + [0.7] * 100), classes=2, lr_steps=[])["cls"] == "none"
    rare = [1 / 50] * 200
    assert label(_run(rare + [0.45] * 100), classes=50, lr_steps=[])["cls"] == "none"
    assert label(_run(rare + [0.55] * 100), classes=50, lr_steps=[])["cls"] == "grokking"
