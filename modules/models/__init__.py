"""Models for tests and demos: a tiny random Qwen2, the packaged SmolLM2-135M-Instruct, and aliases."""

from __future__ import annotations

from modules.models.cache import ModelNotFoundError, default_cache_dir
from modules.models.registry import list_aliases, resolve_model_path
from modules.models.smollm2 import packaged_smollm2_path
from modules.models.tiny import build_tiny_model

__all__ = [
    "ModelNotFoundError",
    "build_tiny_model",
    "default_cache_dir",
    "list_aliases",
    "packaged_smollm2_path",
    "resolve_model_path",
]
