"""`tvae` model evaluator: recompute the DESIGN.md eval metrics from a logged TernaryVAE model.

Registered under the `mlflow.model_evaluator` entry point, so anyone can run

    mlflow.models.evaluate(model_uri, ops, model_type="tvae", evaluators=["tvae"])

where `ops` is the (N, 9) table of trits (`tvae.ops.ternary_ops()`; all 19,683 rows reproduce
the training-time numbers exactly). The evaluator feeds the rows through the pyfunc model, names
the output columns (`radius_A`, `radius_B`, `recon_0..8`, `z_*`) and computes coverage,
hierarchy_A/B, dist_corr, richness, Q and r_v0/r_v9 with the same code the trainer uses
(`tvae.metrics.compute_eval_metrics`), deterministically on the CPU. Valuations are derived
from the input rows themselves, so any subset of operations can be evaluated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator
from mlflow.tracking import MlflowClient

MODEL_TYPE = "tvae"
N_TRITS = 9


def _ops_array(features: Any) -> np.ndarray:
    values = features.to_numpy() if isinstance(features, pd.DataFrame) else np.asarray(features)
    values = values.astype(np.float32, copy=False)
    if values.ndim != 2 or values.shape[1] != N_TRITS:
        raise ValueError(f"tvae evaluator: expected N x {N_TRITS} trits, got {values.shape}")
    if not np.isin(values, (-1.0, 0.0, 1.0)).all():
        raise ValueError("tvae evaluator: trits must be -1, 0 or +1")
    return values


def _model_input(model: Any, ops: np.ndarray) -> np.ndarray:
    """Cast the trits to the dtype the model's tensor signature enforces (float64 if none)."""
    dtype = np.float64
    try:
        spec = model.metadata.get_input_schema().inputs[0]
        dtype = spec.type if isinstance(spec.type, np.dtype) else dtype
    except (AttributeError, IndexError, TypeError):
        pass
    return ops.astype(dtype)


def eval_metrics_from_predictions(ops: np.ndarray, predictions: Any) -> dict[str, float]:
    """The eval metrics (keys without the `eval/` prefix) of one pyfunc prediction."""
    import torch

    from mlflow_plugins.model_logging import predictions_to_frame
    from tvae.metrics import compute_eval_metrics
    from tvae.ops import valuation_of

    frame = predictions_to_frame(predictions)
    ops_t = torch.from_numpy(np.ascontiguousarray(ops, dtype=np.float32))
    index = ((ops_t + 1).long() * (3 ** torch.arange(N_TRITS))).sum(dim=1)
    recon = torch.tensor(frame[[f"recon_{i}" for i in range(N_TRITS)]].to_numpy(np.float32))
    values = compute_eval_metrics(
        ops_t,
        valuation_of(index),
        recon.round(),
        torch.tensor(frame["radius_A"].to_numpy(np.float32)),
        torch.tensor(frame["radius_B"].to_numpy(np.float32)),
    )
    return {key.removeprefix("eval/"): float(v) for key, v in values.items()}


class TVAEEvaluator(ModelEvaluator):
    """MLflow evaluator plugin for TernaryVAE pyfunc models (model_type "tvae")."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type in (MODEL_TYPE, None)

    def evaluate(
        self,
        *,
        model_type,
        dataset,
        run_id,
        evaluator_config,
        model=None,
        extra_metrics=None,
        custom_artifacts=None,
        predictions=None,
        **kwargs,
    ) -> EvaluationResult:
        ops = _ops_array(dataset.features_data)
        if model is not None:
            raw = model.predict(_model_input(model, ops))
        elif dataset.predictions_data is not None:
            raw = dataset.predictions_data
        else:
            raise ValueError("tvae evaluator: needs a model or a predictions column")
        metrics = eval_metrics_from_predictions(ops, raw)
        metrics["example_count"] = float(len(ops))
        if run_id is not None:
            MlflowClient().log_batch(run_id, metrics=_as_metrics(metrics))
        return EvaluationResult(metrics=metrics, artifacts={}, run_id=run_id)


def _as_metrics(values: dict[str, float]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(f"tvae_eval/{k}", v, now, 0) for k, v in values.items()]


def evaluate_model_uri(model_uri: str) -> dict[str, float]:
    """Evaluate a logged model on all 19,683 operations through `mlflow.models.evaluate`."""
    import mlflow

    from tvae.ops import ternary_ops

    ops = pd.DataFrame(ternary_ops().numpy(), columns=[f"t{i}" for i in range(N_TRITS)])
    result = mlflow.models.evaluate(
        model_uri, ops, model_type=MODEL_TYPE, evaluators=[MODEL_TYPE], env_manager="local"
    )
    return dict(result.metrics)
