"""The benchmark stage: what every study variant costs (models.py) and the MoE layer against a
dense FFN, a naive loop and HF's Switch layer (layer.py)."""
