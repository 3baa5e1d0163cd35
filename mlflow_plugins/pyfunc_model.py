"""The logged model's pyfunc: N x 9 trits of any integer or float dtype in, a DataFrame out.

MLflow loads this file as a model from code (`mlflow.models.set_model`), so loading unpickles
no Python objects and needs nothing from this package: the network is the `torch.export`
program stored as artifact `program`, and the output column names come from the model config
(`predict_columns`). Users pass trits as integers (`int64`, `int8`) or floats; the columns of
the result are `radius_A, radius_B, recon_0..recon_8, z_0..z_{L-1}`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

PROGRAM_ARTIFACT = "program"
COLUMNS_CONFIG = "predict_columns"
N_TRITS = 9  # tvae.embedding_head.N_TRITS; this file imports nothing of ours (see above)


class TritEmbeddingModel(mlflow.pyfunc.PythonModel):
    """Runs the exported embedding head and names its output columns."""

    def load_context(self, context: Any) -> None:
        self.program = torch.export.load(context.artifacts[PROGRAM_ARTIFACT]).module()
        self.columns = list(context.model_config[COLUMNS_CONFIG])

    def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> pd.DataFrame:
        """`model_input`: an array or DataFrame (MLflow passes either as given)."""
        index = model_input.index if isinstance(model_input, pd.DataFrame) else None
        values = np.asarray(model_input)
        if values.ndim != 2 or values.shape[1] != N_TRITS:
            raise ValueError(f"expected N x {N_TRITS} trits, got shape {values.shape}")
        if not np.isin(values, (-1, 0, 1)).all():
            raise ValueError("trits must be -1, 0 or +1")
        ops = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        with torch.no_grad():
            out = self.program(ops)
        return pd.DataFrame(out.numpy(), columns=self.columns, index=index)


mlflow.models.set_model(TritEmbeddingModel())
