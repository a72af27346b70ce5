"""The claims study: published claims about MoE gating re-tested with paired seeds and intervals.

spec.py      claims/params.yaml -> typed claims; each cell resolved to RunConfigs of the root params
study.py     one claim: train and evaluate every cell x seed (the existing loop and evaluate code)
verdicts.py  the verdict rules (paired t intervals, TOST, non-inferiority, trend, variance ratio)
report.py    metrics/claims.{json,md}; plots.py: one figure per claim
cli.py       `moelab claims run|report`
"""
