"""The logged model, loaded back with `mlflow.pyfunc.load_model` from a real SQLite store:
trits in as integers or floats, a DataFrame with named columns out.

One tiny model is logged per module (torch.export takes seconds). Cost: ~10 s on 2 cores.
"""

from __future__ import annotations

import re
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from mlflow_plugins.model_logging import log_head
from tvae.config import ModelConfig
from tvae.embedding_head import EmbeddingHead, export_head, predict_columns
from tvae.model import TernaryVAE
from tvae.ops import ternary_ops

LATENT = 4


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """(loaded pyfunc model, the head it was exported from, the run it was logged to)."""
    from conftest import _forget_fluent_state, fresh_store

    root = tmp_path_factory.mktemp("predict")
    uri = fresh_store(root)
    mlflow.set_tracking_uri(uri)
    _forget_fluent_state()
    exp = mlflow.MlflowClient().create_experiment("predict", str(root / "artifacts"))
    torch.manual_seed(0)
    config = ModelConfig(encoder_hidden=[32], decoder_hidden=[16], latent_dim=LATENT)
    head = EmbeddingHead(TernaryVAE.from_config(config).eval()).eval()
    with mlflow.start_run(experiment_id=exp) as run:
        info = log_head(head, LATENT, step=3)
    model = mlflow.pyfunc.load_model(info.model_uri)
    yield model, head, mlflow.MlflowClient().get_run(run.info.run_id)
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.int32, np.float32, np.float64])
def test_predict_takes_trits_of_any_numeric_dtype_and_names_the_columns(logged, dtype):
    model, head, _ = logged
    ops = ternary_ops().numpy()
    out = model.predict(ops.astype(dtype))
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == predict_columns(LATENT)
    assert list(out.columns[:11]) == ["radius_A", "radius_B"] + [f"recon_{i}" for i in range(9)]
    assert list(out.columns[-LATENT:]) == [f"z_{i}" for i in range(LATENT)]
    with torch.no_grad():
        expected = head(torch.from_numpy(ops)).numpy()
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_dataframe_keeps_its_index_and_one_row_works(logged):
    model, _, _ = logged
    ops = ternary_ops().numpy().astype(np.int64)
    frame = pd.DataFrame(ops[:5], index=list("abcde"), columns=[f"t{i}" for i in range(9)])
    out = model.predict(frame)
    assert list(out.index) == list("abcde") and out.shape == (5, 11 + LATENT)
    assert set(np.unique(out.filter(like="recon_").to_numpy())) <= {-1.0, 0.0, 1.0}
    assert model.predict(ops[:1]).shape == (1, 11 + LATENT)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((3, 8), dtype=np.int64), "expected N x 9 trits"),
        (np.full((2, 9), 2, dtype=np.int64), "trits must be -1, 0 or +1"),
        (np.full((2, 9), 0.5), "trits must be -1, 0 or +1"),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong(logged, bad, message):
    model, _, _ = logged
    with pytest.raises(ValueError, match=re.escape(message)):
        model.predict(bad)


def test_the_run_points_at_its_model_and_the_model_documents_its_columns(logged):
    model, _, run = logged
    tags = run.data.tags
    assert tags["model.uri"] == f"models:/{tags['model.id']}" and tags["model.step"] == "3"
    assert model.metadata.metadata["predict_columns"] == predict_columns(LATENT)
    assert model.metadata.get_output_schema().input_names() == predict_columns(LATENT)
    assert model.metadata.get_input_schema() is None  # the model checks its input itself
    assert "python_function" in model.metadata.flavors


def test_the_trainers_column_major_weights_are_saved_without_a_warning(tmp_path):
    """The encoders keep their first weight column-major for training speed; the saved
    program gets plain contiguous weights (no torch.export.save warning), same outputs."""
    torch.manual_seed(0)
    config = ModelConfig(encoder_hidden=[32], decoder_hidden=[16], latent_dim=LATENT)
    head = EmbeddingHead(TernaryVAE.from_config(config).eval()).eval()
    assert not head.vae.encoder_A.net[0].weight.is_contiguous()
    ops = ternary_ops()
    with torch.no_grad():
        expected = head(ops)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.export.save(export_head(head, ops[:8]), tmp_path / "head.pt2")
    loaded = torch.export.load(tmp_path / "head.pt2").module()
    with torch.no_grad():
        assert torch.equal(loaded(ops.to(torch.float32)), expected)
