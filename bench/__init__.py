"""Benchmarks: ranking quality against the BEIR table and speed against the alternatives.

`python -m bench` (what `make bench` runs) writes `bench/results/`: report.md, results.json and PNG plots.
Every configuration is measured in the same run, so the report gives ratios rather than lone absolute figures.
"""
