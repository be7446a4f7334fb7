"""Benchmarks: each prints kubegate's figure beside its baseline, measured in the same run."""
