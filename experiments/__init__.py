"""Presets, sweep runners, report builders and benchmarks."""
