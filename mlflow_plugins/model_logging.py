"""Log the best checkpoint as an MLflow model (pytorch flavour) that maps trits to embeddings.

Format: `pt2` (torch.export). MLflow 3.17 refuses to unpickle `pickle`-format pytorch models
unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true is set, and a pickled module also needs this
package's code importable wherever it is served. A `pt2` archive is a pickle-free exported
graph plus weights: it loads with `mlflow.pyfunc.load_model` and serves with plain torch, and
it loads in a second or less.

Input: a float64 N x 9 tensor spec (what a pandas DataFrame of floats holds; MLflow enforces
tensor dtypes strictly, so cast float32/int arrays with `.astype("float64")`; the REST server
casts JSON `inputs` to the spec itself). The head casts to float32 inside.

Output: the pytorch pyfunc returns one tensor per row without column names, so the column
order is fixed here and recorded in the model's metadata (`predict_columns`):

    radius_A, radius_B, recon_0 .. recon_8, z_0 .. z_{latent_dim-1}

`radius_*` are hyperbolic radii of encoder A/B embeddings, `recon_*` the reconstructed trits in
{-1, 0, 1}, `z_*` the encoder B embedding. `predictions_to_frame(raw)` names the columns of
whatever `predict` returned (DataFrame with integer columns, or ndarray).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec

from mlflow_plugins.pyfunc_model import EmbeddingHead
from tvae import contract as C

MODEL_NAME = "model"
N_TRITS = 9
BASE_COLUMNS = ["radius_A", "radius_B"] + [f"recon_{i}" for i in range(N_TRITS)]
INPUT_COLUMNS = [f"t{i}" for i in range(N_TRITS)]


def predict_columns(latent_dim: int) -> list[str]:
    """Column names of the pyfunc output, in order, for a model with this latent size."""
    return BASE_COLUMNS + [f"z_{i}" for i in range(latent_dim)]


PREDICT_COLUMNS = predict_columns(16)  # the default config's latent_dim


def predictions_to_frame(raw: Any) -> pd.DataFrame:
    """Name the columns of a pyfunc `predict` result (latent size inferred from the width)."""
    values = raw.to_numpy() if isinstance(raw, pd.DataFrame) else np.asarray(raw)
    if values.ndim != 2 or values.shape[1] <= len(BASE_COLUMNS):
        raise ValueError(f"expected a 2-d prediction wider than 11 columns, got {values.shape}")
    index = raw.index if isinstance(raw, pd.DataFrame) else None
    columns = predict_columns(values.shape[1] - len(BASE_COLUMNS))
    return pd.DataFrame(values, columns=columns, index=index)


def _pip_requirements() -> list[str]:
    """Pinned explicitly: inferring requirements re-imports the model and costs seconds."""
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
    ]


def build_head(checkpoint: Path) -> tuple[EmbeddingHead, int]:
    """The exportable head around the checkpoint's model, in eval mode, and its latent size."""
    from tvae.checkpoint import load_model

    vae, config = load_model(Path(checkpoint))
    head = EmbeddingHead(vae.cpu().float()).eval()
    return head, config.model.latent_dim


def log_best_model(checkpoint: Path, step: int, run_id: str | None = None) -> ModelInfo:
    """Log `checkpoint` as MLflow model `name="model"` at `step` and tag the run with its id/URI.

    Uses the active run unless run_id is given.
    """
    from tvae.ops import ternary_ops

    head, latent_dim = build_head(checkpoint)
    columns = predict_columns(latent_dim)
    example = ternary_ops()[:: 3**N_TRITS // 8][:8].numpy().astype(np.float64)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, N_TRITS))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(columns)))]),
    )
    kwargs: dict[str, Any] = {}
    if run_id is not None:
        kwargs["run_id"] = run_id
    with torch.no_grad():
        info = mlflow.pytorch.log_model(
            head,
            name=MODEL_NAME,
            step=int(step),
            input_example=example,
            signature=signature,
            serialization_format="pt2",
            pip_requirements=_pip_requirements(),
            metadata={"predict_columns": columns, "input": "N x 9 trits in {-1,0,1}"},
            # MLflow would reload the saved model and predict the example (~0.5 s per run);
            # this head is the same code every time and tests load and serve it instead
            validate_serving_input=False,
            **kwargs,
        )
    target = run_id or mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    client.set_tag(target, C.MODEL_ID, info.model_id)
    client.set_tag(target, C.MODEL_URI, info.model_uri)
    client.set_tag(target, C.MODEL_STEP, str(int(step)))
    return info
