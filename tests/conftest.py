import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params"


@pytest.fixture(scope="session")
def tiny_params():
    from asa_lib.params import load_params

    return load_params(PARAMS / "tiny.yaml")


@pytest.fixture(scope="session")
def demo_params():
    from asa_lib.params import load_params

    return load_params(PARAMS / "demo.yaml")


@pytest.fixture(scope="session")
def tiny_lm(tiny_params):
    from asa_lib.model.load import load_model

    return load_model(tiny_params.model, seed=0)


@pytest.fixture(scope="session")
def smol_lm(demo_params):
    from asa_lib.model.load import load_model

    return load_model(demo_params.model)


@pytest.fixture
def params_file(tmp_path):
    """Write a params YAML (a dict) next to a copy of the bundled data; returns its path."""
    import yaml

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(ROOT / "data" / "alpaca_subset.jsonl.xz", data / "alpaca_subset.jsonl.xz")

    def write(d, name="p.yaml"):
        p = tmp_path / name
        p.write_text(yaml.safe_dump(d) if isinstance(d, dict) else d)
        return p

    return write


PROMPTS = [
    "Hi",
    "Calculate the average of 3, 8 and 10 please, and more words to make it long",
    "Search for the latest news",
    "Write a function that reverses a string.",
]


@pytest.fixture(scope="session")
def demo_lm(demo_params):
    """The demo model: SmolLM2-135M with the project's tool-call LoRA adapter merged in."""
    from asa_lib.model.load import load_params_model

    return load_params_model(demo_params)
