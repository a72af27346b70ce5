import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params_file(tmp_path, repo_params):
    """Write a (modified) copy of the repo's params.yaml; returns a function taking overrides."""
    def write(mutate=None, name="params.yaml") -> Path:
        data = copy.deepcopy(repo_params)
        if mutate:
            mutate(data)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path
    return write
