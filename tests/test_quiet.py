"""A run's log carries our output, not library noise: no transformers progress bar per model load or save, no
Lightning product tips, no LightningCLI warning about the args our own dispatcher passes."""

from __future__ import annotations

import sys
import warnings

from modules.policy import Policy


def test_model_loading_and_saving_draw_no_progress_bars(tiny_model_path, tmp_path, capfd):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_model_path)  # transformers' own call draws its bar (the control)
    assert "Loading weights" in capfd.readouterr().err
    policy = Policy.from_pretrained(str(tiny_model_path), reference="copy")
    with policy.reference_model() as reference:  # the frozen copy: a second load
        assert reference is not policy.model
    policy.save_pretrained(tmp_path / "saved")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err
    AutoModelForCausalLM.from_pretrained(tiny_model_path)  # outside our calls the bar is back
    assert "Loading weights" in capfd.readouterr().err


def test_cli_shows_no_lightning_tips_nor_args_warning(tiny_model_path, tmp_path, monkeypatch, capfd, caplog):
    from recipes.cli.fit import build_cli
    from recipes.cli.registry import CONFIG_DIR

    monkeypatch.setattr(sys, "argv", ["r1", "run", "--config", "pipeline.yaml"])  # as under `r1 run` / `r1 compare`
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(["--config", str(CONFIG_DIR / "grpo.yaml"), "--model.model_name_or_path", str(tiny_model_path),
                         "--data.num_rows", "16", "--data.val_size", "4", "--trainer.default_root_dir", str(tmp_path)],
                        run=False)
    assert cli.trainer.checkpoint_callback is not None and cli.trainer.loggers  # what the tips are printed about
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]
    out = capfd.readouterr()
    assert "Tip:" not in out.out + out.err + caplog.text
