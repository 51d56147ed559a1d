"""Callbacks against a real `lightning.Trainer` and a tiny stand-in for `RLRecipe`."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from callbacks import AdapterCheckpoint, HeldOutEval, MetricsPlot, SampleTable
from callbacks.metrics_plot import moving_average
from callbacks.samples import shorten
from modules.rollout.batch import RolloutBatch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_rollout() -> RolloutBatch:
    """Two groups of two; two reward functions, the second returned None for row 1."""
    n, p, t = 4, 2, 3
    completions = ["The answer is 42", "I think [bold]7[/bold]", "so 3", "maybe 5"]
    return RolloutBatch(
        prompt_ids=torch.ones(n, p, dtype=torch.long), prompt_mask=torch.ones(n, p, dtype=torch.long),
        completion_ids=torch.ones(n, t, dtype=torch.long),
        completion_mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]),
        completion_attention_mask=torch.ones(n, t, dtype=torch.long),
        prompts=["What is 6*7?", "What is 6*7?", [{"role": "user", "content": "What is 1+2?"}], "What is 1+2?"],
        completions=completions, group_ids=torch.tensor([0, 0, 1, 1]),
        rewards=torch.tensor([1.5, 0.25, 1.0, 0.0]),
        rewards_per_func=torch.tensor([[1.0, 0.5], [0.25, float("nan")], [1.0, 0.0], [0.0, 0.0]]),
        reward_names=["accuracy", "format"],
        advantages=torch.tensor([0.625, -0.625, 0.75, -0.75]),
    )


class FakePolicy:
    def __init__(self, is_peft: bool) -> None:
        self.is_peft = is_peft

    def save_pretrained(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "adapter_model.safetensors").write_text("weights")
        return directory


class ToyRecipe(L.LightningModule):
    """The slice of `RLRecipe` the callbacks use: last_rollout, evaluate, policy, train/* logging."""

    def __init__(self, is_peft: bool = True) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = nn.Linear(1, 1)
        self.policy = FakePolicy(is_peft)
        self.last_rollout: RolloutBatch | None = None
        self.eval_calls: list[tuple[int, int, int, int]] = []  # (global_step, rows, k, batch_size)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.layer(batch).sum())
        opt.step()  # global_step += 1
        step = self.global_step
        self.log_dict({"train/reward": 0.25 * step, "train/completion_length": 10.0 + step}, on_step=True)
        self.last_rollout = make_rollout()

    def evaluate(self, rows, *, k=1, batch_size=16):
        self.eval_calls.append((self.global_step, len(rows), k, batch_size))
        return {"eval/reward": 0.5 + 0.25 * self.global_step, "eval/accuracy": 0.5}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class ToyData(L.LightningDataModule):
    def __init__(self, held_out: int = 5) -> None:
        super().__init__()
        self.held_out = held_out

    def train_dataloader(self):
        return DataLoader(torch.ones(16, 1), batch_size=1)

    def held_out_rows(self) -> list[dict]:
        return [{"prompt": f"q{i}", "answer": str(i)} for i in range(self.held_out)]


def fit(tmp_path: Path, callbacks: list, *, max_steps: int, module: ToyRecipe | None = None,
        data: ToyData | None = None, ckpt_path: str | None = None,
        log_every_n_steps: int = 1) -> tuple[L.Trainer, ToyRecipe]:
    module = module or ToyRecipe()
    trainer = L.Trainer(max_steps=max_steps, callbacks=callbacks, logger=CSVLogger(tmp_path), accelerator="cpu",
                        devices=1, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        log_every_n_steps=log_every_n_steps)
    trainer.fit(module, datamodule=data or ToyData(), ckpt_path=ckpt_path)
    return trainer, module


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def render_text(table, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(table)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- SampleTable
def test_sample_table_render_shows_texts_rewards_and_advantages():
    text = render_text(SampleTable(num_samples=3).render(make_rollout()))
    assert "The answer is 42" in text
    assert "I think [bold]7[/bold]" in text  # completion text is not parsed as rich markup
    assert "user: What is 1+2?" in text  # chat prompts are shown as role: content
    assert "maybe 5" not in text  # only num_samples rows
    header = next(line for line in text.splitlines() if "accuracy" in line)
    assert "format" in header and "reward" in header and "advantage" in header
    row0 = next(line for line in text.splitlines() if "The answer is 42" in line)
    assert [c.strip() for c in row0.split("│")[3:7]] == ["1.000", "0.500", "1.500", "0.625"]
    row1 = next(line for line in text.splitlines() if "I think" in line)
    assert [c.strip() for c in row1.split("│")[3:7]] == ["0.250", "-", "0.250", "-0.625"]  # NaN = None -> "-"


def test_sample_table_per_token_advantages_are_averaged_over_trained_tokens():
    rollout = make_rollout()
    rollout.advantages = torch.tensor([[1.0, 2.0, 3.0], [4.0, 2.0, 100.0], [0.0, 9.0, 9.0], [0.0, 0.0, 0.0]])
    text = render_text(SampleTable(num_samples=3).render(rollout))
    rows = [line for line in text.splitlines() if "answer is 42" in line or "I think" in line or "so 3" in line]
    assert [r.split("│")[6].strip() for r in rows] == ["2.000", "3.000", "0.000"]  # masked tokens ignored


def test_shorten_keeps_both_ends():
    assert shorten("short", 20) == "short"
    out = shorten("A" * 50 + "END", 20)
    assert len(out) == 20 and out.startswith("AAAA") and out.endswith("END") and " … " in out


def test_sample_table_prints_every_n_steps(tmp_path):
    out = io.StringIO()
    fit(tmp_path, [SampleTable(every_n_steps=2, console=Console(file=out, width=200))], max_steps=5)
    titles = [line.strip() for line in out.getvalue().splitlines() if "samples at step" in line]
    assert titles == ["samples at step 2", "samples at step 4"]


# ---------------------------------------------------------------------------------------------- MetricsPlot
def test_metrics_plot_writes_png_and_csv(tmp_path):
    plot = MetricsPlot()
    trainer, _ = fit(tmp_path, [plot], max_steps=3)
    assert plot.last_path == Path(trainer.log_dir) / "reward_curve.png"
    assert plot.last_path.read_bytes()[:8] == PNG_SIGNATURE
    rows = read_csv(plot.last_path.parent / "metrics_history.csv")
    got = {(int(r["step"]), r["key"]): float(r["value"]) for r in rows}
    assert got == {(1, "train/reward"): 0.25, (2, "train/reward"): 0.5, (3, "train/reward"): 0.75,
                   (1, "train/completion_length"): 11.0, (2, "train/completion_length"): 12.0,
                   (3, "train/completion_length"): 13.0}  # train/accuracy never logged -> absent


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint")
def test_metrics_plot_state_dict_round_trips_and_resume_keeps_the_whole_curve(tmp_path):
    plot = MetricsPlot(dirpath=tmp_path / "plots")
    trainer, _ = fit(tmp_path, [plot], max_steps=2)
    copy = MetricsPlot()
    copy.load_state_dict(plot.state_dict())
    assert copy.history == plot.history == {"train/reward": {1: 0.25, 2: 0.5},
                                            "train/completion_length": {1: 11.0, 2: 12.0}}
    ckpt = tmp_path / "two.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = MetricsPlot(dirpath=tmp_path / "plots")
    fit(tmp_path, [resumed], max_steps=4, ckpt_path=str(ckpt))
    assert resumed.history["train/reward"] == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
    rows = read_csv(tmp_path / "plots" / "metrics_history.csv")
    assert [int(r["step"]) for r in rows if r["key"] == "train/reward"] == [1, 2, 3, 4]


def test_moving_average():
    assert moving_average([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


# ---------------------------------------------------------------------------------------------- HeldOutEval
@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_held_out_eval_runs_at_start_every_n_and_end_and_feeds_the_plot(tmp_path):
    ev = HeldOutEval(every_n_steps=2, k=4, batch_size=3, max_rows=4, console=Console(file=io.StringIO(), width=200))
    plot = MetricsPlot()
    trainer, module = fit(tmp_path, [plot, ev], max_steps=5, log_every_n_steps=50)
    assert module.eval_calls == [(0, 4, 4, 3), (2, 4, 4, 3), (4, 4, 4, 3), (5, 4, 4, 3)]
    assert [step for step, _ in ev.history] == [0, 2, 4, 5]
    summary = ev.summary()
    assert summary["start_step"] == 0 and summary["end_step"] == 5
    assert summary["metrics"]["eval/reward"] == {"start": 0.5, "end": 1.75, "change": 1.25}
    assert summary["metrics"]["eval/accuracy"] == {"start": 0.5, "end": 0.5, "change": 0.0}
    table = ev.console.file.getvalue()
    assert "eval/reward" in table and "+1.2500" in table and "step 0 -> step 5" in table
    # each evaluation is announced with its size; from the second on, with the time the last one's pace gives
    assert "held-out evaluation at step 0: 4 prompts in 2 batches of 3, pass@4\n" in table
    assert "at step 0: 4 prompts in 2 batches of 3, pass@4, about" not in table
    assert "held-out evaluation at step 2: 4 prompts in 2 batches of 3, pass@4, about " in table
    assert table.count("held-out evaluation took ") == 4
    # every evaluation reaches the logger, although log_every_n_steps=50 holds back the step metrics
    logged = [float(r["eval/reward"]) for r in read_csv(Path(trainer.log_dir) / "metrics.csv") if r.get("eval/reward")]
    assert sorted(logged) == [0.5, 1.0, 1.5, 1.75]
    assert float(trainer.callback_metrics["eval/reward"]) == 1.75  # the final evaluation, readable after fit
    # MetricsPlot (listed before HeldOutEval) still gets every eval point, at the right steps
    assert plot.history["eval/reward"] == {0: 0.5, 2: 1.0, 4: 1.5, 5: 1.75}
    rows = read_csv(plot.last_path.parent / "metrics_history.csv")
    assert {(int(r["step"]), float(r["value"])) for r in rows if r["key"] == "eval/accuracy"} == {
        (0, 0.5), (2, 0.5), (4, 0.5), (5, 0.5)}


def test_held_out_eval_does_not_repeat_the_last_step_and_skips_without_rows(tmp_path):
    ev = HeldOutEval(every_n_steps=2, console=Console(file=io.StringIO()))
    _, module = fit(tmp_path, [ev], max_steps=4)
    assert [c[0] for c in module.eval_calls] == [0, 2, 4]  # end of training == step 4: not evaluated twice

    empty = HeldOutEval(every_n_steps=1, console=Console(file=io.StringIO()))
    with pytest.warns(UserWarning, match="no held-out rows") as record:
        _, module = fit(tmp_path, [empty], max_steps=2, data=ToyData(held_out=0))
    assert module.eval_calls == [] and empty.history == [] and empty.summary() == {}
    assert sum("no held-out rows" in str(w.message) for w in record) == 1  # warned once


def test_held_out_eval_state_dict_and_missing_metric():
    ev = HeldOutEval()
    ev.history = [(0, {"eval/reward": 0.5}), (8, {"eval/reward": 0.75, "eval/pass@4": 1.0})]
    copy = HeldOutEval()
    copy.load_state_dict(ev.state_dict())
    assert copy.history == ev.history
    metrics = copy.summary()["metrics"]
    assert metrics["eval/reward"]["change"] == 0.25
    assert math.isnan(metrics["eval/pass@4"]["start"]) and metrics["eval/pass@4"]["end"] == 1.0


def test_held_out_eval_needs_an_evaluate_method():
    with pytest.raises(TypeError, match="pl_module.evaluate"):
        HeldOutEval().setup(None, nn.Linear(1, 1), "fit")


# ---------------------------------------------------------------------------------------------- AdapterCheckpoint
def test_adapter_checkpoint_saves_every_n_steps_and_final_for_lora(tmp_path):
    cb = AdapterCheckpoint(every_n_steps=2)
    trainer, _ = fit(tmp_path, [cb], max_steps=5)
    root = Path(trainer.log_dir) / "adapters"
    assert sorted(p.name for p in root.iterdir()) == ["final", "step-2", "step-4"]
    assert all((root / name / "adapter_model.safetensors").read_text() == "weights" for name in ("step-2", "final"))
    assert cb.saved == [root / "step-2", root / "step-4", root / "final"]


def test_adapter_checkpoint_full_fine_tune_saves_only_the_final_model(tmp_path):
    cb = AdapterCheckpoint(dirpath=tmp_path / "out", every_n_steps=1)
    fit(tmp_path, [cb], max_steps=3, module=ToyRecipe(is_peft=False))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["final"]

    off = AdapterCheckpoint(dirpath=tmp_path / "off", every_n_steps=1, save_final=False)
    fit(tmp_path, [off], max_steps=2, module=ToyRecipe(is_peft=False))
    assert not (tmp_path / "off").exists() and off.saved == []


def test_step_progress_bar_counts_steps_across_epochs_and_shows_short_metrics(tmp_path):
    from callbacks import StepProgressBar

    bar = StepProgressBar()
    trainer = L.Trainer(max_steps=20, callbacks=[bar], logger=CSVLogger(tmp_path), accelerator="cpu", devices=1,
                        enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(ToyRecipe(), datamodule=ToyData())  # 16 batches per epoch: the run crosses an epoch boundary
    tqdm_bar = bar.train_progress_bar
    assert (tqdm_bar.n, tqdm_bar.total) == (20, 20)  # not reset to 0/16 at the second epoch
    assert "reward=5" in tqdm_bar.postfix and "len=30" in tqdm_bar.postfix and "v_num" not in tqdm_bar.postfix
