"""LoRA adapters merged into the base weights at load time (``model.adapter``).

Only safetensors adapter weights are accepted (never a pickle), checked against
the sha256 in the adapter's ``training.json`` where it has one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from asa_lib.files import JSONDepthError, loads_json
from asa_lib.provenance import file_digest

ADAPTER_FILE = "adapter_model.safetensors"


RECORD_FILE = "training.json"


def peft_version() -> str:
    import peft

    return peft.__version__


def sha256_file(path: str | Path) -> str:
    return file_digest(path)


def merge_adapter(model: torch.nn.Module, adapter_dir: str | Path) -> tuple[torch.nn.Module, str]:
    """The base ``model`` with the LoRA adapter in ``adapter_dir`` merged in; and the adapter's sha256.

    Only safetensors adapter weights are accepted (never a pickle).
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / ADAPTER_FILE
    if not weights.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"model.adapter: {adapter_dir} holds no LoRA adapter (expected {ADAPTER_FILE} and "
            "adapter_config.json; `make demo-model` trains the demo's)"
        )
    digest = sha256_file(weights)
    record = adapter_dir / RECORD_FILE
    if record.is_file():
        try:
            rec = loads_json(record.read_text(encoding="utf-8"))
        except JSONDepthError as e:
            raise ValueError(f"model.adapter: {record}: {e}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"model.adapter: {record} is not a JSON object")
        want = rec.get("adapter_sha256")
        if want and want != digest:
            raise ValueError(
                f"model.adapter: {weights} does not match the sha256 in {record} "
                "(the file was changed after training)"
            )
    try:
        with warnings.catch_warnings():
            # peft reads the model's `is_gradient_checkpointing`, which transformers 5
            # deprecates (FutureWarning): peft's business, not the user's, and it would
            # sit in every report of a run with an adapter (02, each 06, 07).
            warnings.filterwarnings(
                "ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning
            )
            peft_model = PeftModel.from_pretrained(model, adapter_dir, use_safetensors=True)
    except (
        RuntimeError,
        KeyError,
        ValueError,
        TypeError,
    ) as e:  # e.g. an adapter for another base model
        raise ValueError(
            f"model.adapter: {adapter_dir} does not fit this model ({str(e).splitlines()[0]})"
        ) from None
    return peft_model.merge_and_unload(), digest
