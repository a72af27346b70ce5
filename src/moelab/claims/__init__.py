"""The claims study: published claims about MoE gating re-tested with paired seeds and intervals.

spec.py      claims/params.yaml -> typed claims (the budget block, roles, margins); each cell resolved to
             RunConfigs of the root params
study.py     one claim: train and evaluate every cell x seed (the existing loop and evaluate code) -> a runs file
runs.py      reading a runs file: paired seeds, per-seed values, a part's per-seed effects
verdicts.py  the rules (paired t intervals, TOST, non-inferiority, trend, variance ratio), their p-values,
             the regime bar, roles (manipulation check, measured), Holm, how a claim combines its parts
power.py     from a pilot's paired SD: seeds needed for a margin, the margin n seeds resolve
plan.py      `moelab claims plan`: runs, distinct trained runs, expected cost, the power table
report.py    metrics/claims.json (numbers only), claims.details.json, claims.md; plots.py: one figure per claim
cli.py       `moelab claims pilot|plan|run|report`
"""
