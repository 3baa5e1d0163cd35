"""Regenerate the detection corpus: train every run, label it, assign the split.

    python tests/corpus/make_corpus.py                 # all runs (about an hour on 2 cores)
    python tests/corpus/make_corpus.py --only NAME...  # some runs
    python tests/corpus/make_corpus.py --relabel       # labels and split from the CSVs only

Writes tests/corpus/runs/<name>.csv.gz (one row per logged epoch) and tests/corpus/index.json
(each run's spec, facts, label and split). See tests/corpus/README.md for the labelling rule.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import INDEX, RUNS_DIR, load_run  # noqa: E402
from label import label  # noqa: E402
from trainers import Spec, train  # noqa: E402

SPLIT_SEED = 12  # fixed before any tuning; a quarter of each class goes to the test split
TEST_SHARE = 0.25

TF = {"model": "transformer", "width": 64, "log_every": 2}
DIG = {"task": "digits", "frac": 256, "hidden": 128}

# Held-out sets made after the test split had been scored and the detector changed on seeing
# it; each was scored once, with the detector as committed when it was made (see README.md).
FRESH = [
    Spec("add59_f45_wd1_s7", p=59, frac=0.45, lr=1e-2, epochs=3000, seed=7),
    Spec("sub53_f50_wd1_s3", op="sub", p=53, frac=0.5, lr=1e-2, epochs=3000, seed=3),
    Spec("mul47_f60_wd05_s4", op="mul", p=47, frac=0.6, wd=0.5, lr=1e-2, epochs=3000, seed=4),
    Spec("add43_f60_wd1_lr3e3_s5", p=43, frac=0.6, lr=3e-3, epochs=2500, seed=5),
    Spec("sq53_f70_wd1_s6", op="sq", p=53, frac=0.7, lr=1e-2, epochs=3000, seed=6),
    Spec(
        "add61_f40_mb256_s2", p=61, frac=0.4, lr=1e-3, epochs=1500, batch=256, log_every=5, seed=2
    ),
    Spec("tf_mul37_f50_lr3e3_s1", op="mul", p=37, frac=0.5, lr=3e-3, epochs=3000, seed=1, **TF),
    Spec(
        "digits_a7_wd05_s2",
        lr=1e-3,
        wd=0.05,
        init_scale=7.0,
        epochs=25000,
        log_every=10,
        seed=2,
        **DIG,
    ),
    Spec(
        "add53_f50_step1500_s8",
        p=53,
        frac=0.5,
        lr=1e-2,
        epochs=3000,
        schedule="step:1500:0.1",
        seed=8,
    ),
    Spec(
        "mul53_f60_warmup200_s9",
        op="mul",
        p=53,
        frac=0.6,
        lr=1e-2,
        epochs=2000,
        schedule="warmup:200",
        seed=9,
    ),
    Spec("add59_f20_wd1_s1", p=59, frac=0.2, lr=1e-2, epochs=3000, seed=1),
    Spec("mul53_f30_wd0_s2", op="mul", p=53, frac=0.3, wd=0.0, lr=1e-3, epochs=2000, seed=2),
    Spec(
        "add43_f50_adam_s3",
        p=43,
        frac=0.5,
        optimizer="adam",
        lr=1e-3,
        epochs=6000,
        log_every=3,
        seed=3,
    ),
    Spec("digits_a1_n800_s3", lr=1e-3, wd=0.05, epochs=800, seed=3, **{**DIG, "frac": 800}),
    Spec("digits_a1_mb64_s4", lr=1e-3, wd=0.01, epochs=150, batch=64, seed=4, **DIG),
    Spec(
        "blobs_step25_s5",
        task="blobs",
        optimizer="adam",
        lr=1.0,
        epochs=50,
        batch=50,
        schedule="step:25:0.05",
        seed=5,
    ),
    Spec(
        "add53_f40_cos350_s6", p=53, frac=0.4, lr=1e-2, epochs=3000, schedule="cosine:350", seed=6
    ),
    Spec(
        "sub59_f50_cos600_s4",
        op="sub",
        p=59,
        frac=0.5,
        lr=3e-3,
        epochs=3000,
        schedule="cosine:600",
        seed=4,
    ),
    Spec("tf_add37_f30_lr1e3_s2", p=37, frac=0.3, lr=1e-3, epochs=2000, seed=2, **TF),
    Spec(
        "digits_a2_n400_s5",
        lr=1e-3,
        wd=0.05,
        init_scale=2.0,
        epochs=3000,
        seed=5,
        **{**DIG, "frac": 400},
    ),
]

FRESH3 = [
    Spec("add67_f40_wd1_s11", p=67, frac=0.4, lr=1e-2, epochs=3000, seed=11),
    Spec("sub47_f55_wd1_s12", op="sub", p=47, frac=0.55, lr=1e-2, epochs=2500, seed=12),
    Spec("mul59_f45_wd05_s13", op="mul", p=59, frac=0.45, wd=0.5, lr=1e-2, epochs=3000, seed=13),
    Spec("add53_f60_lr3e3_s14", p=53, frac=0.6, lr=3e-3, epochs=2500, seed=14),
    Spec(
        "add47_f50_mb128_s15", p=47, frac=0.5, lr=1e-3, epochs=1500, batch=128, log_every=5, seed=15
    ),
    Spec("tf_add37_f50_lr3e3_s16", p=37, frac=0.5, lr=3e-3, epochs=3000, seed=16, **TF),
    Spec(
        "digits_a9_wd05_s17",
        lr=1e-3,
        wd=0.05,
        init_scale=9.0,
        epochs=30000,
        log_every=10,
        seed=17,
        **DIG,
    ),
    Spec(
        "sub53_f50_step800_s18",
        op="sub",
        p=53,
        frac=0.5,
        lr=1e-2,
        epochs=3000,
        schedule="step:800:0.3",
        seed=18,
    ),
    Spec(
        "add59_f50_cos450_s19", p=59, frac=0.5, lr=1e-2, epochs=3000, schedule="cosine:450", seed=19
    ),
    Spec(
        "mul47_f50_warmup50_s20",
        op="mul",
        p=47,
        frac=0.5,
        lr=1e-2,
        epochs=2000,
        schedule="warmup:50",
        seed=20,
    ),
    Spec("add67_f15_wd1_s21", p=67, frac=0.15, lr=1e-2, epochs=3000, seed=21),
    Spec("sub53_f30_wd0_s22", op="sub", p=53, frac=0.3, wd=0.0, lr=1e-3, epochs=2000, seed=22),
    Spec(
        "mul43_f50_adam_s23",
        op="mul",
        p=43,
        frac=0.5,
        optimizer="adam",
        lr=1e-3,
        epochs=6000,
        log_every=3,
        seed=23,
    ),
    Spec("digits_a1_n600_s24", lr=1e-3, wd=0.05, epochs=800, seed=24, **{**DIG, "frac": 600}),
    Spec(
        "digits_a1_step_s25",
        lr=1e-2,
        wd=0.01,
        epochs=300,
        batch=64,
        schedule="step:100:0.1",
        seed=25,
        **DIG,
    ),
    Spec(
        "blobs_sgd_s26",
        task="blobs",
        optimizer="sgd",
        lr=0.1,
        wd=0.0,
        epochs=80,
        batch=100,
        seed=26,
    ),
    Spec("tf_sub37_f30_lr1e3_s27", op="sub", p=37, frac=0.3, lr=1e-3, epochs=2000, seed=27, **TF),
    Spec(
        "add53_f30_mb64_wd2_s28",
        p=53,
        frac=0.3,
        wd=2.0,
        lr=1e-3,
        epochs=1000,
        batch=64,
        log_every=10,
        seed=28,
    ),
    Spec(
        "digits_a3_n300_s29",
        lr=1e-3,
        wd=0.05,
        init_scale=3.0,
        epochs=4000,
        seed=29,
        **{**DIG, "frac": 300},
    ),
    Spec(
        "sub59_f40_cos800_s30",
        op="sub",
        p=59,
        frac=0.4,
        lr=1e-2,
        epochs=3000,
        schedule="cosine:800",
        seed=30,
    ),
]

FRESH4 = [
    Spec("add61_f45_wd1_s31", p=61, frac=0.45, lr=1e-2, epochs=3000, seed=31),
    Spec("sub43_f60_wd05_s32", op="sub", p=43, frac=0.6, wd=0.5, lr=1e-2, epochs=2500, seed=32),
    Spec("mul53_f55_wd1_lr3e3_s33", op="mul", p=53, frac=0.55, lr=3e-3, epochs=3000, seed=33),
    Spec("sq47_f65_wd1_s34", op="sq", p=47, frac=0.65, lr=1e-2, epochs=3000, seed=34),
    Spec("add59_f90_lr3e3_s35", p=59, frac=0.9, lr=3e-3, epochs=1500, seed=35),
    Spec("tf_mul37_f50_lr3e3_s36", op="mul", p=37, frac=0.5, lr=3e-3, epochs=3000, seed=36, **TF),
    Spec(
        "digits_a8_wd05_s37",
        lr=1e-3,
        wd=0.05,
        init_scale=8.0,
        epochs=30000,
        log_every=10,
        seed=37,
        **DIG,
    ),
    Spec(
        "digits_a10_wd1_s38",
        lr=1e-3,
        wd=0.1,
        init_scale=10.0,
        epochs=30000,
        log_every=10,
        seed=38,
        **DIG,
    ),
    Spec(
        "add53_f50_step1200_s39",
        p=53,
        frac=0.5,
        lr=1e-2,
        epochs=3000,
        schedule="step:1200:0.3",
        seed=39,
    ),
    Spec(
        "sub59_f45_step300_s40",
        op="sub",
        p=59,
        frac=0.45,
        lr=1e-2,
        epochs=3000,
        schedule="step:300:0.1",
        seed=40,
    ),
    Spec(
        "mul53_f50_cos600_s41",
        op="mul",
        p=53,
        frac=0.5,
        lr=1e-2,
        epochs=3000,
        schedule="cosine:600",
        seed=41,
    ),
    Spec(
        "add47_f40_cos1000_s42",
        p=47,
        frac=0.4,
        lr=1e-2,
        epochs=3000,
        schedule="cosine:1000",
        seed=42,
    ),
    Spec(
        "add59_f50_warmup100_s43",
        p=59,
        frac=0.5,
        lr=1e-2,
        epochs=2000,
        schedule="warmup:100",
        seed=43,
    ),
    Spec(
        "add53_f50_adam_s44",
        p=53,
        frac=0.5,
        optimizer="adam",
        lr=1e-3,
        epochs=6000,
        log_every=3,
        seed=44,
    ),
    Spec("sub61_f20_wd1_s45", op="sub", p=61, frac=0.2, lr=1e-2, epochs=3000, seed=45),
    Spec("mul47_f30_wd0_s46", op="mul", p=47, frac=0.3, wd=0.0, lr=1e-3, epochs=2000, seed=46),
    Spec(
        "sub53_f50_mb128_s47",
        op="sub",
        p=53,
        frac=0.5,
        lr=1e-3,
        epochs=1500,
        batch=128,
        log_every=5,
        seed=47,
    ),
    Spec("digits_a1_n400_s48", lr=1e-3, wd=0.05, epochs=800, seed=48, **{**DIG, "frac": 400}),
    Spec(
        "digits_a2_cos_s49",
        lr=1e-3,
        wd=0.05,
        init_scale=2.0,
        epochs=1500,
        schedule="cosine:300",
        seed=49,
        **DIG,
    ),
    Spec(
        "blobs_step_s50",
        task="blobs",
        optimizer="sgd",
        lr=0.1,
        wd=0.0,
        epochs=100,
        batch=100,
        schedule="step:40:0.1",
        seed=50,
    ),
]

# Made on 2026-12-03, trained before any detector change that session (seeds 51+).
FRESH5 = [
    Spec("add47_f55_wd1_s51", p=47, frac=0.55, lr=1e-2, epochs=2500, seed=51),
    Spec("sub67_f45_wd05_s52", op="sub", p=67, frac=0.45, wd=0.5, lr=1e-2, epochs=3000, seed=52),
    Spec("mul61_f50_wd1_s53", op="mul", p=61, frac=0.5, lr=1e-2, epochs=3000, seed=53),
    Spec("sq59_f50_wd1_s54", op="sq", p=59, frac=0.5, lr=1e-2, epochs=3000, seed=54),
    Spec("add41_f70_lr3e3_s55", p=41, frac=0.7, lr=3e-3, epochs=2000, seed=55),
    Spec(
        "sub47_f50_step1000_s56",
        op="sub",
        p=47,
        frac=0.5,
        lr=1e-2,
        epochs=3000,
        schedule="step:1000:0.2",
        seed=56,
    ),
    Spec(
        "add61_f50_cos1500_s57",
        p=61,
        frac=0.5,
        lr=1e-2,
        epochs=3000,
        schedule="cosine:1500",
        seed=57,
    ),
    Spec(
        "mul41_f60_warmup150_s58",
        op="mul",
        p=41,
        frac=0.6,
        lr=1e-2,
        epochs=2000,
        schedule="warmup:150",
        seed=58,
    ),
    Spec("add59_f35_wd1_s59", p=59, frac=0.35, lr=1e-2, epochs=4000, seed=59),
    Spec(
        "digits_a6_wd05_s60",
        lr=1e-3,
        wd=0.05,
        init_scale=6.0,
        epochs=20000,
        log_every=10,
        seed=60,
        **DIG,
    ),
    Spec(
        "digits_a9_wd1_s61",
        lr=1e-3,
        wd=0.1,
        init_scale=9.0,
        epochs=30000,
        log_every=10,
        seed=61,
        **DIG,
    ),
    Spec("tf_sub41_f50_lr3e3_s62", op="sub", p=41, frac=0.5, lr=3e-3, epochs=3000, seed=62, **TF),
    Spec(
        "tf_add37_f50_adam_s63",
        p=37,
        frac=0.5,
        optimizer="adam",
        lr=1e-3,
        epochs=6000,
        seed=63,
        **{**TF, "width": 32, "log_every": 4},
    ),
    Spec("sub47_f20_wd1_s64", op="sub", p=47, frac=0.2, lr=1e-2, epochs=3000, seed=64),
    Spec("mul61_f22_wd1_s65", op="mul", p=61, frac=0.22, lr=1e-2, epochs=3000, seed=65),
    Spec("add59_f30_wd0_s66", p=59, frac=0.3, wd=0.0, lr=1e-3, epochs=2000, seed=66),
    Spec(
        "sub47_f50_adam_s67",
        op="sub",
        p=47,
        frac=0.5,
        optimizer="adam",
        lr=1e-3,
        epochs=6000,
        log_every=3,
        seed=67,
    ),
    Spec("digits_a1_f90_s68", lr=1e-3, wd=0.05, epochs=600, seed=68, **{**DIG, "frac": 0.9}),
    Spec(
        "digits_a1_f85_mb64_s69",
        lr=1e-3,
        wd=0.01,
        epochs=100,
        batch=64,
        seed=69,
        **{**DIG, "frac": 0.85},
    ),
    Spec(
        "digits_a2_f90_s70",
        lr=1e-3,
        wd=0.05,
        init_scale=2.0,
        epochs=1500,
        seed=70,
        **{**DIG, "frac": 0.9},
    ),
    Spec(
        "mul59_f50_mb256_s71",
        op="mul",
        p=59,
        frac=0.5,
        lr=1e-3,
        epochs=1500,
        batch=256,
        log_every=5,
        seed=71,
    ),
    Spec(
        "add43_f60_mb128_s72",
        p=43,
        frac=0.6,
        lr=1e-3,
        epochs=1000,
        batch=128,
        log_every=10,
        seed=72,
    ),
]

RUNS = [
    # modular arithmetic, embedding MLP, full-batch AdamW: grokking at several delays
    Spec("add53_f40_wd1", p=53, frac=0.4, lr=1e-2, epochs=3000),
    Spec("add53_f40_wd1_s1", p=53, frac=0.4, lr=1e-2, epochs=3000, seed=1),
    Spec("sub59_f50_wd1", op="sub", p=59, frac=0.5, lr=3e-3, epochs=4000),
    Spec("mul53_f50_wd1", op="mul", p=53, frac=0.5, lr=1e-2, epochs=3000),
    Spec("add53_f80_wd1", p=53, frac=0.8, lr=1e-2, epochs=1500),
    Spec("add53_f70_wd1_lr1e3", p=53, frac=0.7, lr=1e-3, epochs=2500),
    Spec("add47_f50_wd03", p=47, frac=0.5, wd=0.3, lr=1e-2, epochs=2500),
    Spec("sq43_f60_wd1", op="sq", p=43, frac=0.6, lr=1e-2, epochs=3000),
    Spec("sub43_f70_wd1", op="sub", p=43, frac=0.7, lr=1e-2, epochs=1500),
    Spec("add97_f30_wd1", p=97, frac=0.3, lr=3e-3, epochs=3000, width=32, hidden=128),
    Spec("mul67_f40_wd05", op="mul", p=67, frac=0.4, wd=0.5, lr=1e-2, epochs=4000),
    Spec("cube37_f60_wd1", op="cube", p=37, frac=0.6, lr=1e-2, epochs=3000),
    Spec("add53_f90_wd1", p=53, frac=0.9, lr=1e-2, epochs=1000),
    Spec("add53_f95_wd1_lr3e3", p=53, frac=0.95, lr=3e-3, epochs=1000),
    Spec("sub53_f90_wd01_lr1e3", op="sub", p=53, frac=0.9, wd=0.1, lr=1e-3, epochs=4000),
    # schedules: warmup, a step after generalising, a step long before, warm restarts
    Spec(
        "mul53_f50_warmup",
        op="mul",
        p=53,
        frac=0.5,
        lr=1e-2,
        epochs=2000,
        schedule="warmup:100",
        seed=1,
    ),
    Spec("add53_f40_step2000", p=53, frac=0.4, lr=1e-2, epochs=3000, schedule="step:2000:0.1"),
    Spec(
        "add53_f50_step200", p=53, frac=0.5, lr=1e-2, epochs=3000, schedule="step:200:0.5", seed=2
    ),
    Spec(
        "add53_f40_lr3e2_step1500",
        p=53,
        frac=0.4,
        lr=3e-2,
        epochs=3000,
        schedule="step:1500:0.1",
        seed=3,
    ),
    Spec("add53_f40_cos400", p=53, frac=0.4, lr=1e-2, epochs=3000, schedule="cosine:400", seed=1),
    Spec(
        "sub47_f60_cos1000",
        op="sub",
        p=47,
        frac=0.6,
        lr=1e-2,
        epochs=3000,
        schedule="cosine:1000",
        seed=2,
    ),
    # one-layer transformer
    Spec("tf_add43_f50_lr3e3", p=43, frac=0.5, lr=3e-3, epochs=3000, **TF),
    Spec("tf_mul43_f60_lr3e3", op="mul", p=43, frac=0.6, lr=3e-3, epochs=3000, **TF),
    Spec("tf_add43_f50_lr1e3", p=43, frac=0.5, lr=1e-3, epochs=3000, **TF),
    Spec(
        "tf_sub37_f50_adam",
        op="sub",
        p=37,
        frac=0.5,
        optimizer="adam",
        lr=1e-3,
        epochs=6000,
        model="transformer",
        width=32,
        log_every=4,
    ),
    # digits, Omnigrok-style (large initialisation, MSE) and plain
    Spec("digits_a8_wd05", lr=1e-3, wd=0.05, init_scale=8.0, epochs=30000, log_every=10, **DIG),
    Spec("digits_a6_wd1", lr=1e-3, wd=0.1, init_scale=6.0, epochs=20000, log_every=10, **DIG),
    Spec("digits_a4_wd05", lr=1e-3, wd=0.05, init_scale=4.0, epochs=10000, log_every=5, **DIG),
    Spec(
        "digits_a10_wd01_100k",
        lr=1e-3,
        wd=0.01,
        init_scale=10.0,
        epochs=100000,
        log_every=50,
        **DIG,
    ),
    Spec("digits_a1", lr=1e-3, wd=0.05, epochs=2000, **DIG),
    Spec("digits_a1_mb32_100ep", lr=1e-3, wd=0.01, epochs=100, batch=32, **DIG),
    Spec("digits_a1_step", lr=1e-2, wd=0.01, epochs=300, batch=64, schedule="step:150:0.1", **DIG),
    Spec("digits_a1_cos", lr=3e-3, wd=0.01, epochs=500, batch=64, schedule="cosine:100", **DIG),
    # never generalise within budget: tiny fractions, no decay, Adam slingshots
    Spec("add53_f15_wd1", p=53, frac=0.15, lr=1e-2, epochs=3000),
    Spec("add53_f30_wd0", p=53, frac=0.3, wd=0.0, lr=1e-3, epochs=1500, seed=2),
    Spec("add53_f20_wd03", p=53, frac=0.2, wd=0.3, lr=1e-2, epochs=3000),
    Spec("add47_f50_adam", p=47, frac=0.5, optimizer="adam", lr=1e-3, epochs=8000, log_every=4),
    Spec("add31_f50_wd01_100k", p=31, frac=0.5, wd=0.1, lr=1e-3, epochs=100000, log_every=20),
    Spec(
        "mul59_f30_adam",
        op="mul",
        p=59,
        frac=0.3,
        optimizer="adam",
        lr=3e-3,
        epochs=5000,
        log_every=2,
    ),
    # plain classification: generalises while it fits; an LR drop and warm restarts
    Spec(
        "blobs_step35",
        task="blobs",
        optimizer="adam",
        lr=1.0,
        epochs=60,
        batch=50,
        schedule="step:35:0.05",
        seed=3,
    ),
    Spec(
        "blobs_sgd_100ep",
        task="blobs",
        optimizer="sgd",
        lr=0.05,
        wd=0.0,
        epochs=100,
        batch=100,
        seed=4,
    ),
    # minibatch training, logged every k epochs (noisy)
    Spec("add59_f50_mb256", p=59, frac=0.5, lr=1e-3, epochs=1500, batch=256, log_every=5),
    Spec(
        "mul53_f50_mb128",
        op="mul",
        p=53,
        frac=0.5,
        lr=1e-3,
        epochs=1000,
        batch=128,
        log_every=10,
        seed=1,
    ),
    Spec(
        "sub53_f40_mb512_wd2",
        op="sub",
        p=53,
        frac=0.4,
        wd=2.0,
        lr=2e-3,
        epochs=2000,
        batch=512,
        log_every=5,
    ),
    Spec("add53_f30_mb64", p=53, frac=0.3, lr=1e-3, epochs=1000, batch=64, log_every=10, seed=2),
    # more schedules around and inside transitions, and plain tasks that fit and generalise
    Spec("add53_f40_cos300", p=53, frac=0.4, lr=1e-2, epochs=3000, schedule="cosine:300", seed=2),
    Spec(
        "mul53_f50_cos250",
        op="mul",
        p=53,
        frac=0.5,
        lr=1e-2,
        epochs=2000,
        schedule="cosine:250",
        seed=3,
    ),
    Spec(
        "sub59_f50_cos500",
        op="sub",
        p=59,
        frac=0.5,
        lr=3e-3,
        epochs=3000,
        schedule="cosine:500",
        seed=1,
    ),
    Spec(
        "add53_f40_step500", p=53, frac=0.4, lr=1e-2, epochs=4000, schedule="step:500:0.1", seed=4
    ),
    Spec("mul53_f25_wd1", op="mul", p=53, frac=0.25, lr=1e-2, epochs=3000, seed=5),
    Spec("digits_a1_n500", lr=1e-3, wd=0.05, epochs=1000, **{**DIG, "frac": 500}),
    Spec("digits_a1_n1000_s1", lr=1e-3, wd=0.05, epochs=600, seed=1, **{**DIG, "frac": 1000}),
    Spec("digits_a2", lr=1e-3, wd=0.05, init_scale=2.0, epochs=3000, **DIG),
    Spec("digits_a1_sgd", optimizer="sgd", lr=0.05, wd=1e-4, epochs=200, batch=32, **DIG),
    Spec(
        "digits_a3_step",
        lr=1e-3,
        wd=0.05,
        init_scale=3.0,
        epochs=4000,
        schedule="step:1500:0.1",
        **DIG,
    ),
    *FRESH,
    *FRESH3,
    *FRESH4,
    *FRESH5,
]


def _train_one(spec: Spec) -> tuple[str, dict]:
    import torch

    torch.set_num_threads(1)
    history, facts = train(spec)
    RUNS_DIR.mkdir(exist_ok=True)
    history.to_csv(RUNS_DIR / f"{spec.name}.csv.gz", float_format="%.6g")
    return spec.name, facts


def relabel(index: dict) -> dict:
    """Label every run from its CSV and assign the split (stratified by class, fixed seed)."""
    for name, entry in index.items():
        entry["label"] = label(load_run(name), entry["classes"], entry["lr_steps"])
    rng = random.Random(SPLIT_SEED)
    by_class: dict[str, list[str]] = {}
    for name in sorted(index):
        by_class.setdefault(index[name]["label"]["cls"], []).append(name)
    fresh = {spec.name for spec in FRESH}
    fresh3 = {spec.name for spec in FRESH3}
    fresh4 = {spec.name for spec in FRESH4}
    fresh5 = {spec.name for spec in FRESH5}
    for names in by_class.values():
        test = set(rng.sample(names, round(TEST_SHARE * len(names))))
        for name in names:  # a split once assigned stays: it was fixed before tuning
            index[name].setdefault("split", "test" if name in test else "train")
            if name in fresh:
                index[name]["split"] = "test2"
            if name in fresh3:
                index[name]["split"] = "test3"
            if name in fresh4:
                index[name]["split"] = "test4"
            if name in fresh5:
                index[name]["split"] = "test5"
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run names to (re)train")
    parser.add_argument("--relabel", action="store_true", help="only relabel and split")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    index = json.loads(INDEX.read_text()) if INDEX.exists() else {}
    if not args.relabel:
        todo = [s for s in RUNS if not args.only or s.name in args.only]
        todo.sort(key=lambda s: -s.epochs * (20 if s.model == "transformer" else 1))
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for name, facts in pool.imap_unordered(_train_one, todo):
                index[name] = {**index.get(name, {}), **facts}
                INDEX.write_text(json.dumps(index, indent=1) + "\n")
                print(f"{name}: {facts['seconds']} s", flush=True)
    known = {s.name for s in RUNS}
    index = relabel({k: v for k, v in sorted(index.items()) if k in known})
    INDEX.write_text(json.dumps(index, indent=1) + "\n")
    for name, entry in index.items():
        lab = entry["label"]
        print(f"{entry['split']:5s} {lab['cls']:11s} {name} window={lab.get('window')}")


if __name__ == "__main__":
    main()
