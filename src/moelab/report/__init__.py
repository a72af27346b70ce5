"""The report stage: tables (tables.py) and figures (plots.py) from the study's metrics."""
