"""TernaryVAE: a dual-encoder hyperbolic VAE over the 3^9 ternary operations (no MLflow here)."""

import os as _os

# Sleeping (not spinning) OpenMP workers: on a small, shared CPU box a spinning worker whose
# sibling thread is descheduled stalls every parallel region (measured 5-20x slower epochs on
# 2 busy cores). Only takes effect when tvae is imported before torch; set OMP_WAIT_POLICY
# yourself to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
