"""Config validation: one line naming the field; shipped configs load."""

from pathlib import Path

import pytest

from tvae.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load():
    cfg = load_config(REPO / "configs/v5_12_4_extended_grokking.yaml")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (50, 512, 4e-3)  # issue 18
    assert cfg.train.amp == "auto" and cfg.loss.geodesic.start_epoch > 1
    smoke = load_config(REPO / "configs/smoke.yaml")
    assert smoke.train.epochs <= 5


@pytest.mark.parametrize(
    "data, field",
    [
        ({"train": {"lrr": 1e-3}}, "train.lrr"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"loss": {"radial": {"inner_radius": 0.9, "outer_radius": 0.5}}}, "loss.radial"),
        ({"model": {"max_radius": 1.5}}, "model.max_radius"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    msg = str(err.value)
    assert "\n" not in msg and f"'{field}" in msg


def test_overrides_and_file_errors(tmp_path):
    cfg = load_config(REPO / "configs/smoke.yaml", {"train.lr": 1e-3, "loss.kl.beta": 0.0})
    assert cfg.train.lr == 1e-3 and cfg.loss.kl.beta == 0.0
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    for text in ("", "# only a comment\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match="is empty"):
            load_config(empty)


def test_a_retired_key_in_an_older_config_is_dropped():
    """Checkpoints and runs from before the thread-only runner store train.branch_workers."""
    cfg = config_from_dict({"train": {"branch_workers": "process", "threads": 2}})
    assert cfg.train.threads == 2 and "branch_workers" not in cfg.model_dump()["train"]
