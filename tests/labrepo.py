"""A throwaway moelab DVC project (git + dvc init) with tiny LM-only params, for end-to-end tests."""

import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny(params: dict) -> dict:
    """The default params shrunk to one LM cell that trains in seconds."""
    params.update(tasks=["lm"], routers=["linear"], gates=["softmax-top2"], models=["e8"], seeds=[0])
    params["lm"]["data"].update(max_records=40, vocab_size=300, seq_len=32)
    params["lm"]["train"].update(
        steps=6, batch_size=4, eval_every=3, eval_batches=2, checkpoint_every=3, warmup_steps=2
    )
    params["lm"]["evaluate"].update(max_batches=2, samples=1, sample_tokens=8)
    params["benchmark"].update(batch_size=2, repeats=10, warmup=1)
    params["benchmark"]["layer"].update(tokens=[64], d_model=32, d_ff=64, n_experts=4, repeats=10, warmup=1)
    return params


def make_lab(repo: Path, sh: Callable[[str, Path], str]) -> Path:
    """Copy the sources, corpora, pipeline and ignore files into `repo`, write tiny params, git + dvc init, commit."""
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "data" / "corpora", repo / "data" / "corpora")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    params = tiny(yaml.safe_load((ROOT / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git init -q && dvc init -q && dvc config core.analytics false && dvc config core.check_update false", repo)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")  # after `dvc init`, which writes an empty one
    sh("git add -A && git commit -qm init", repo)
    return repo
