"""Thin click CLIs that MLproject calls: parse, validate, call."""
