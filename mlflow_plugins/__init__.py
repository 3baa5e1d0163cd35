"""MLflow half: logging, history, tagging, registry, and the plugins registered via entry points."""
