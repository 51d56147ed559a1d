"""Pipelines (`r1 run`): stages chain their models, pass outputs by substitution, skip when finished and rerun
from `--restart_from`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recipes.cli import main as cli_main
from recipes.cli.registry import CONFIG_DIR
from recipes.cli.stages import StageError, _fit_config, load_pipeline, main, read_done, set_dotted, substitute

PIPELINES = sorted((CONFIG_DIR.parent / "pipelines").glob("*.yaml"))

SFT_CONFIG = {
    "seed_everything": 0,
    "trainer": {"max_steps": 2, "log_every_n_steps": 1, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
                "logger": False},
    "model": {"class_path": "recipes.sft.SFT",
              "init_args": {"model_name_or_path": "set-by-the-pipeline", "optimizer": {"learning_rate": 1.0e-3}, "max_length": 256,
                            "lora": {"r": 4, "alpha": 8}}},
    "data": {"class_path": "datamodules.sft.SFTDataModule",
             "init_args": {"task": "datamodules.tasks.teacher_traces.make_teacher_traces",
                           "task_kwargs": {"teachers": ["adaptive"]}, "num_rows": 8, "batch_size": 2}},
}

STEP_MODULE = '''
import json
from pathlib import Path

CALLS = []

def write_rows(stage_dir, model_path, *, n, note):
    CALLS.append(model_path)
    rows = [{"prompt": f"What is {i} + {i}?", "response": f"<think>{i}+{i}</think><answer>{2 * i}</answer>"}
            for i in range(n)]
    path = Path(stage_dir) / "rows.jsonl"
    path.write_text("\\n".join(json.dumps(r) for r in rows))
    return {"data_path": str(path), "note": note, "metrics": {"rows": float(n)}}
'''


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    (tmp_path / "steps_for_test.py").write_text(STEP_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {
        "root": str(tmp_path / "runs"),
        "stages": [
            {"name": "first", "config": SFT_CONFIG},
            {"name": "data", "call": "steps_for_test.write_rows", "kwargs": {"n": 6, "note": "from ${stages.first.model_path}"}},
            {"name": "second", "config": SFT_CONFIG,
             "overrides": {"data.init_args.task": None, "data.init_args.source": "${stages.data.data_path}"}},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_two_fit_stages_chain_models_skip_when_done_and_restart(pipeline, tiny_model_path, tmp_path, capsys):
    import steps_for_test

    root = tmp_path / "runs"
    assert main(["--config", str(pipeline), "--model", str(tiny_model_path)]) == 0
    first, data, second = read_done(root / "first"), read_done(root / "data"), read_done(root / "second")
    # The first stage starts from --model; its merged output starts the call stage and then the second stage.
    assert yaml.safe_load((root / "first" / "fit_config.yaml").read_text())["model"]["init_args"][
        "model_name_or_path"] == str(tiny_model_path)
    assert first["model_path"] == str(root / "first" / "model") and (root / "first" / "model" / "config.json").is_file()
    assert steps_for_test.CALLS == [first["model_path"]]
    assert data["outputs"]["note"] == f"from {first['model_path']}" and data["metrics"] == {"rows": 6.0}
    second_config = yaml.safe_load((root / "second" / "fit_config.yaml").read_text())
    assert second_config["model"]["init_args"]["model_name_or_path"] == first["model_path"]
    assert second_config["data"]["init_args"]["source"] == data["outputs"]["data_path"]
    assert second["model_path"] == str(root / "second" / "model")
    assert second["metrics"]["train/loss"] > 0 and second["kind"] == "fit"

    # A rerun skips every finished stage.
    stamps = {name: (root / name / "DONE.json").stat().st_mtime_ns for name in ("first", "data", "second")}
    capsys.readouterr()
    assert main(["--config", str(pipeline), "--model", str(tiny_model_path)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert {name: (root / name / "DONE.json").stat().st_mtime_ns for name in stamps} == stamps
    assert steps_for_test.CALLS == [first["model_path"]]

    # --restart_from reruns that stage and the ones after it, not the ones before.
    assert main(["--config", str(pipeline), "--model", str(tiny_model_path), "--restart_from", "data"]) == 0
    assert (root / "first" / "DONE.json").stat().st_mtime_ns == stamps["first"]
    assert (root / "data" / "DONE.json").stat().st_mtime_ns != stamps["data"]
    assert (root / "second" / "DONE.json").stat().st_mtime_ns != stamps["second"]
    assert len(steps_for_test.CALLS) == 2


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_shipped_pipeline_builds_fit_configs_that_parse(path, tmp_path, capsys):
    spec = load_pipeline(path)
    fits = [s for s in spec["stages"] if "config" in s]
    assert fits
    for stage in fits:
        config = _fit_config(stage, spec, tmp_path / stage["name"], spec.get("model"), {"root": str(tmp_path)}, {})
        file = tmp_path / f"{stage['name']}.yaml"
        file.write_text(yaml.safe_dump(config))
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", "--config", str(file), "--print_config"])
        assert exit_info.value.code in (0, None), capsys.readouterr().err
        capsys.readouterr()


def test_start_from_base_and_stage_set_model_are_respected(tmp_path, tiny_model_path):
    spec = {"_path": str(tmp_path / "p.yaml"), "overrides": {"trainer.max_steps": 5}}
    config = _fit_config({"name": "s", "config": SFT_CONFIG}, spec, tmp_path / "s", "prev/model", {}, {})
    assert config["model"]["init_args"]["model_name_or_path"] == "prev/model"
    assert config["trainer"]["max_steps"] == 5 and config["trainer"]["default_root_dir"] == str(tmp_path / "s")
    assert config["trainer"]["callbacks"][-1]["class_path"] == "recipes.cli.stages.StageOutput"
    own = {"name": "s", "config": SFT_CONFIG, "overrides": {"model.init_args.model_name_or_path": "mine"}}
    assert _fit_config(own, spec, tmp_path / "s", "prev/model", {}, {})["model"]["init_args"][
        "model_name_or_path"] == "mine"
    assert SFT_CONFIG["trainer"]["max_steps"] == 2  # the source config is not modified


def test_bad_pipelines_fail_with_a_named_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": [{"name": "a", "config": {}, "call": "x.y"}]}))
    assert main(["--config", str(bad)]) == 2
    assert "exactly one of `config`" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"stages": [{"name": "a", "call": "x.y", "start_from": "later"}]}))
    with pytest.raises(StageError, match="start_from='later'"):
        load_pipeline(bad)
    bad.write_text(yaml.safe_dump({"stages": [{"name": "a", "call": "json.dumps"}]}))
    assert main(["--config", str(bad), "--restart_from", "nope"]) == 1
    assert "no such stage" in capsys.readouterr().err
    with pytest.raises(StageError, match="unknown reference"):
        substitute("${stages.missing.model_path}", {"root": "/r"})
    with pytest.raises(StageError, match="not a mapping"):
        set_dotted({"a": 1}, "a.b", 2)


def test_call_stage_must_return_a_dict(tmp_path, monkeypatch):
    (tmp_path / "bad_step.py").write_text("def step(stage_dir, model_path):\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"root": str(tmp_path / "r"), "stages": [{"name": "a", "call": "bad_step.step"}]}))
    assert main(["--config", str(path)]) == 1
    assert not (Path(tmp_path / "r" / "a" / "DONE.json")).exists()
