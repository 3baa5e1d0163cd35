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
# the research code's yardstick (issue 18): Spearman(|z_B,i - z_B,j|, |v_i - v_j|) over all pairs
# of a fixed draw of 1,000 operations, and dist_corr_latent + 1.5 |hierarchy_B|. They need B's
# latent points, not only radii, so they are a key set of their own (the tiers stay on eval/Q).
DIST_CORR_LATENT = "eval/dist_corr_latent"
Q_LATENT = "eval/Q_latent"
LATENT_EVAL_KEYS = (DIST_CORR_LATENT, Q_LATENT)
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
STOP_REASON = "train.stop_reason"  # why a run ended FINISHED before train.epochs
DIST_WORLD_SIZE = "dist.world_size"  # param: processes of a data-parallel training (torchrun)
DIST_BACKEND = "dist.backend"  # param: its torch.distributed backend (nccl, gloo)

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

# tags the live watcher (or the in-training callback) writes onto a run while it trains
GROKKING_LIVE_EVENTS = "grokking.live.events"  # confirmed events on the history so far
GROKKING_LIVE_FIRST_EPOCH = "grokking.live.first_epoch"  # the first confirmed event's epoch
GROKKING_LIVE_SEVERITY = "grokking.live.severity"
GROKKING_LIVE_CONFIDENCE = "grokking.live.confidence"
GROKKING_LIVE_SEEN_AT_STEP = "grokking.live.seen_at_step"  # the run's last step at the decision
GROKKING_LIVE_STATE = "grokking.live.state"  # one of LIVE_STATES
GROKKING_LIVE_SINCE = "grokking.live.since"  # epoch the current state began (plateau start, ...)
GROKKING_LIVE_DETAIL = "grokking.live.detail"  # the state in one human line
GROKKING_LIVE_WITHDRAWN = "grokking.live.withdrawn"  # a breakthrough (or event) taken back, why
#: Values of `grokking.live.state`, in the order a grokking run goes through them.
LIVE_STATES = ("none", "plateau", "breakthrough", "confirmed")
#: Every tag the live watcher owns on a run.
GROKKING_LIVE_TAGS = (
    GROKKING_LIVE_EVENTS,
    GROKKING_LIVE_FIRST_EPOCH,
    GROKKING_LIVE_SEVERITY,
    GROKKING_LIVE_CONFIDENCE,
    GROKKING_LIVE_SEEN_AT_STEP,
    GROKKING_LIVE_STATE,
    GROKKING_LIVE_SINCE,
    GROKKING_LIVE_DETAIL,
    GROKKING_LIVE_WITHDRAWN,
)

# tags a sweep writes: on each of its training runs (nested under the study's parent run) ...
SWEEP_STUDY = "sweep.study"  # the Optuna study name (also on the parent run)
SWEEP_TRIAL = "sweep.trial"  # the trial number in the study
SWEEP_SEED = "sweep.seed"  # the seed of this training run (seeds 0..K-1 per trial)
SWEEP_PRUNED = "sweep.pruned"  # the epoch at which the study pruned this run (ended KILLED)
SWEEP_ANALYSIS_OF_TRIAL = "sweep.analysis_of_trial"  # on the analyze run of a trial's run
SWEEP_PARENT_RUN = "sweep.parent_run"  # on an `mlflow run` run that joined an existing study
# ... and on the parent run
SWEEP_STORAGE = "sweep.storage"  # the Optuna storage, any password masked
SWEEP_BEST_TRIAL = "sweep.best_trial"
SWEEP_BEST_VALUE = "sweep.best_value"  # the best trial's mean over seeds
SWEEP_BEST_PARAMS = "sweep.best_params"  # the best trial's sampled values, short JSON
SWEEP_REGISTERED = "sweep.registered"  # with register=true: "<model> version <n>"

#: MLflow's system metrics (CPU, GPU, memory samples): kept apart from the training history
SYSTEM_PREFIX = "system/"
