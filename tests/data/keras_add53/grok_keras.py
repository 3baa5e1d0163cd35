"""How `metrics.csv.gz` was made: a real Keras 3 run (torch backend) logged by MLflow's own
Keras autologging (`mlflow.keras.autolog()`, not by this project), kept as a test fixture.

(a + b) mod 53, 40 % of the pairs for training (the same split as the Lightning fixtures),
embedding MLP, AdamW (weight decay 1, lr 1e-3, betas (0.9, 0.98)), minibatches of 256
(5 optimizer steps an epoch), validation on the other 60 % in one batch after every epoch,
5,000 epochs, one CPU thread (~6 minutes of fit, ~7 with MLflow's model logging). The layers
are initialised like torch's defaults (embeddings N(0, 1), Linear weights and biases
U(+-1/sqrt(fan_in))) so the model matches the Lightning and HF fixtures' rather than Keras'
own smaller defaults. Train accuracy passes 0.99 at epoch 81, validation accuracy 0.1 at
1,521, 0.9 at 2,422 and 0.99 at 2,856.

MLflow's Keras callback logs Keras' epoch logs at the end of every epoch, against the epoch
(0-based, 0-4,999): `loss`, `accuracy`, `val_loss`, `val_accuracy` (no learning-rate key).
Its `on_test_end` also fires for each epoch's validation and logs the same validation values
again as `validation_loss` and `validation_accuracy` with no step, so all 5,000 rows of each
sit at step 0 and only their timestamps order them.

    pip install keras
    KERAS_BACKEND=torch MLFLOW_TRACKING_URI=sqlite:///grok.db \
        python tests/data/keras_add53/grok_keras.py

The fixture is that run's metric rows (key, step, value, ms since its first row).
"""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

P, BATCH = 53, 256
EPOCHS = int(os.environ.get("GROK_EPOCHS", "5000"))


def make_data(seed: int = 0):
    a, b = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    x = np.stack([a.ravel(), b.ravel()], 1).astype("int32")
    y = ((x[:, 0] + x[:, 1]) % P).astype("int32")
    perm = torch.randperm(P * P, generator=torch.Generator().manual_seed(seed)).numpy()
    n = int(0.4 * P * P)
    return (x[perm[:n]], y[perm[:n]]), (x[perm[n:]], y[perm[n:]])


def dense(units: int, fan_in: int, **kw) -> keras.layers.Dense:
    bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's default init
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        **kw,
    )


def make_model(dim: int = 64, hidden: int = 256) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((2,), dtype="int32"),
            keras.layers.Embedding(
                P, dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0)
            ),
            keras.layers.Flatten(),
            dense(hidden, 2 * dim, activation="relu"),
            dense(P, hidden),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=1e-3, weight_decay=1.0, beta_1=0.9, beta_2=0.98, epsilon=1e-8
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


if __name__ == "__main__":
    torch.set_num_threads(1)
    keras.utils.set_random_seed(0)
    (xt, yt), (xv, yv) = make_data(0)
    mlflow.set_experiment("keras-grok")
    mlflow.keras.autolog()
    model = make_model()
    with mlflow.start_run(run_name="grok-keras") as run:
        model.fit(
            xt,
            yt,
            batch_size=BATCH,
            epochs=EPOCHS,
            validation_data=(xv, yv),
            validation_batch_size=len(xv),
            shuffle=True,
            verbose=0,
        )
    print("run", run.info.run_id)
