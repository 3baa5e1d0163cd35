"""DESIGN.md's contracts, named once: the per-epoch metric keys of a training run and the tags
an analysis writes onto it. Writers and readers import these; nothing here needs MLflow."""

from __future__ import annotations

# metric keys (step = epoch)
TRAIN_LOSS = "train/loss"
COVERAGE = "eval/coverage"
HIERARCHY_A = "eval/hierarchy_A"
HIERARCHY_B = "eval/hierarchy_B"
DIST_CORR = "eval/dist_corr"
RICHNESS = "eval/richness"
QUALITY = "eval/Q"
R_V0 = "eval/r_v0"
R_V9 = "eval/r_v9"
EVAL_KEYS = (COVERAGE, HIERARCHY_A, HIERARCHY_B, DIST_CORR, RICHNESS, QUALITY, R_V0, R_V9)
GRAD_NORM = "opt/grad_norm"
LR = "opt/lr"
FROZEN_A = "state/frozen_encoder_A"
FROZEN_B = "state/frozen_encoder_B"
LR_PHASE = "state/lr_phase"
GEODESIC_ACTIVE = "state/geodesic_active"
STATE_PREFIX = "state/"  # every key under it is a scheduled control signal
SAMPLES_PER_SEC = "perf/samples_per_sec"
EPOCH_SECONDS = "perf/epoch_seconds"
GPU_MEM_PEAK_FRAC = "perf/gpu_mem_peak_frac"


def loss_term(name: str) -> str:
    """The key of one loss term's epoch mean (``train/loss_<term>``)."""
    return f"{TRAIN_LOSS}_{name}"


# tags the trainer writes onto its run
MODEL_ID = "model.id"  # the logged model (the best epoch's)
MODEL_URI = "model.uri"
MODEL_STEP = "model.step"
FAILURE_REASON = "failure.reason"  # why a run ended FAILED (bad input, NaN/Inf)
RESUMED_FROM_EPOCH = "resume.from_epoch"
PARAMS_CHANGED = "resume.changed_params"  # params a resume changed, key=new value
SKIPPED_STEPS = "resume.skipped_steps"  # retrained epochs whose first metrics are kept
CONTINUED_IN = "resume.continued_in"  # a launcher run whose training went on in another run
OWNER = "train.owner"  # host:pid:process start time of the process training the run
TOOK_OVER_FROM = "resume.took_over_from"  # the dead owner a resume took a RUNNING run from
WORKDIR = "train.workdir"  # host:path of the run's local work folder (checkpoints until uploaded)

# tags an analysis writes onto the training run
GROKKING_EVENTS = "grokking.events"
GROKKING_FIRST_EPOCH = "grokking.first_epoch"
GROKKING_SEVERITY = "grokking.severity"
GROKKING_REJECTED = "grokking.rejected"
GROKKING_CONFIDENCE = "grokking.confidence"
PHASES_COUNT = "phases.count"
PHASES_BOUNDARIES = "phases.boundaries"
TIER = "tier"
ANALYSIS_RUN_ID = "analysis.run_id"
#: Every tag an analysis owns on the training run (a re-analysis replaces or deletes each).
ANALYSIS_TAGS = (
    GROKKING_EVENTS,
    GROKKING_FIRST_EPOCH,
    GROKKING_SEVERITY,
    GROKKING_REJECTED,
    GROKKING_CONFIDENCE,
    PHASES_COUNT,
    PHASES_BOUNDARIES,
    TIER,
    ANALYSIS_RUN_ID,
)
