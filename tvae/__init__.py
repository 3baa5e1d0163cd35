"""TernaryVAE: a dual-encoder hyperbolic VAE over the 3^9 ternary operations (no MLflow here)."""

__version__ = "0.1.0"
