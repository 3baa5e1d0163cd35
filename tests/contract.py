"""The DESIGN.md per-epoch metric contract on CPU, spelled out here (not derived from the code
under test) so the trainer and MLflow tests check the same list."""

CPU_CONTRACT_KEYS = (
    "train/loss",
    *(f"train/loss_{t}" for t in ("recon", "kl", "radial", "rank", "geodesic", "richness")),
    "train/loss_separation",
    "train/loss_latent",
    "eval/coverage",
    "eval/hierarchy_A",
    "eval/hierarchy_B",
    "eval/dist_corr",
    "eval/richness",
    "eval/Q",
    "eval/r_v0",
    "eval/r_v9",
    "eval/dist_corr_latent",
    "eval/Q_latent",
    "opt/grad_norm",
    "opt/lr",
    "state/frozen_encoder_A",
    "state/frozen_encoder_B",
    "state/lr_phase",
    "state/geodesic_active",
    "perf/samples_per_sec",
    "perf/epoch_seconds",
)
