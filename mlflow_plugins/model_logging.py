"""Log the best checkpoint as an MLflow model that maps trits to embeddings.

The model is a pyfunc model from code (`mlflow_plugins/pyfunc_model.py`) around the
`torch.export` program of `tvae.embedding_head.EmbeddingHead`: nothing is pickled, it loads
with `mlflow.pyfunc.load_model` in about a second, and it serves with plain torch, without this
package installed.

Input: N x 9 trits in {-1, 0, 1}, a numpy array or DataFrame of any integer or float dtype.
The signature declares no input schema on purpose: MLflow's schemas either refuse int64 for a
float column or floats for an integer one, so the model checks shape and values itself.

Output: a DataFrame with the columns `radius_A, radius_B, recon_0 .. recon_8, z_0 ..
z_{latent_dim-1}` (the signature's output schema, and the metadata's `predict_columns`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

from mlflow_plugins import pyfunc_model
from mlflow_plugins.pyfunc_model import COLUMNS_CONFIG, PROGRAM_ARTIFACT
from tvae import contract as C
from tvae.embedding_head import (
    BASE_COLUMNS,
    N_TRITS,
    EmbeddingHead,
    export_head,
    head_from_checkpoint,
    predict_columns,
)

MODEL_NAME = "model"
PYFUNC_FILE = Path(pyfunc_model.__file__)


def predictions_to_frame(raw: Any) -> pd.DataFrame:
    """Name the columns of a `predict` result (latent size inferred from the width).

    Models logged before `predict` named its columns return integer labels or arrays.
    """
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


def _save_pyfunc(validate_serving_input: bool = True, **kwargs: Any) -> None:
    mlflow.pyfunc.save_model(**kwargs)


# mlflow.pyfunc for `Model.log`, minus the serving check: Model.log reloads the saved model and
# predicts its input example (~1.5 s, a second torch.export.load) unless it gets
# validate_serving_input=False, an argument mlflow.pyfunc.save_model refuses. The tests load
# and predict a logged model instead.
_PYFUNC_WITHOUT_SERVING_CHECK = SimpleNamespace(__name__="mlflow.pyfunc", save_model=_save_pyfunc)


def log_head(
    head: EmbeddingHead, latent_dim: int, step: int, run_id: str | None = None
) -> ModelInfo:
    """Log `head` as MLflow model `name="model"` at `step` (active run unless run_id is given)
    and tag the run with the model's id, URI and step."""
    from tvae.ops import ternary_ops

    columns = predict_columns(latent_dim)
    example = ternary_ops()[:: 3**N_TRITS // 8][:8].contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "head.pt2"
        torch.export.save(export_head(head, example), program)
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=_PYFUNC_WITHOUT_SERVING_CHECK,
            run_id=run_id,
            step=int(step),
            python_model=str(PYFUNC_FILE),
            artifacts={PROGRAM_ARTIFACT: str(program)},
            model_config={COLUMNS_CONFIG: columns},
            signature=ModelSignature(outputs=Schema([ColSpec("float", c) for c in columns])),
            input_example=example.numpy().astype(np.int64),
            pip_requirements=_pip_requirements(),
            metadata={COLUMNS_CONFIG: columns, "input": "N x 9 trits in {-1,0,1}"},
            validate_serving_input=False,
        )
    target = run_id or mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    client.set_tag(target, C.MODEL_ID, info.model_id)
    client.set_tag(target, C.MODEL_URI, info.model_uri)
    client.set_tag(target, C.MODEL_STEP, str(int(step)))
    return info


def log_best_model(checkpoint: Path, step: int, run_id: str | None = None) -> ModelInfo:
    """Log the checkpoint's model (see `log_head`)."""
    head, latent_dim = head_from_checkpoint(checkpoint)
    return log_head(head, latent_dim, step, run_id)


def prewarm_export() -> None:
    """Pay log_model's one-off costs beside training (see `warm_export`); only a speed-up, so
    any failure is left for log_model to report."""
    try:
        warm_export()
    except Exception:
        pass


def warm_export() -> None:
    """Run log_model's one-off work early: torch.export's first call imports and initialises
    most of torch's compiler stack (a 2-parameter export makes the real export seconds faster).

    It runs while the trainer trains, so it must not draw from torch's global generator: a
    freshly initialised Linear would take random numbers from the training stream, and the
    run would no longer match the same config trained without MLflow (skip_init draws none).
    """
    from torch.export import Dim, export

    with torch.no_grad():
        probe = torch.nn.utils.skip_init(torch.nn.Linear, 2, 2)
        for param in probe.parameters():
            param.zero_()
        export(probe, (torch.zeros(3, 2),), dynamic_shapes=[{0: Dim.AUTO}])
