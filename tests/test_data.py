"""Synthetic tasks, PromptDataModule loading/validation/splitting, and resumable PromptBatches."""

from __future__ import annotations

import ast
import json
import operator
from fractions import Fraction
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import (
    DataConfigError,
    PromptBatches,
    PromptDataModule,
    make_arithmetic,
    make_countdown,
    make_task,
)

PY_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
QA = [{"question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(20)]


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"prompt number {i}", "id": i} for i in range(n)]


def _ids(batch: list[dict]) -> list[int]:
    return [r["id"] for r in batch]


def _take(batches: PromptBatches, m: int) -> list[list[int]]:
    """m batches, starting a new `iter()` at each epoch end the way Lightning's fit loop does."""
    out: list[list[int]] = []
    while len(out) < m:
        for batch in batches:
            out.append(_ids(batch))
            if len(out) == m:
                break
    return out


# ----------------------------------------------------------------------------------------- tasks
def test_arithmetic_answers_are_exact_for_every_op():
    rows = make_arithmetic(300, ops=("+", "-", "*"), seed=3)
    assert {r["op"] for r in rows} == {"+", "-", "*"}
    for r in rows:
        a, b, op = r["a"], r["b"], r["op"]
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert r["answer"] == str(PY_OPS[op](a, b))
        assert r["question"] == f"What is {a} {op} {b}?"
    assert any(r["answer"].startswith("-") for r in rows)  # subtraction may go below zero, answer stays exact


def test_arithmetic_digits_bounds_and_template():
    three = make_arithmetic(50, digits=3, seed=1)
    assert all(100 <= r["a"] <= 999 and 100 <= r["b"] <= 999 for r in three)
    narrow = make_arithmetic(60, low=5, high=7, ops="*", seed=1)
    assert {r["a"] for r in narrow} == {5, 6, 7}
    assert all(int(r["answer"]) == r["a"] * r["b"] for r in narrow)
    row = make_arithmetic(1, template="Compute {a}{op}{b}.", seed=0)[0]
    assert row["question"] == f"Compute {row['a']}+{row['b']}."


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"ops": ("/",)}, "'/'"), ({"digits": 0}, "digits=0"), ({"low": 9, "high": 3}, "low=9"),
     ({"template": "What is {x}?"}, "'x'")],
)
def test_arithmetic_bad_options_name_the_field(kwargs, needle):
    with pytest.raises(DataConfigError, match="make_arithmetic") as err:
        make_arithmetic(3, **kwargs)
    assert needle in str(err.value)


def _safe_eval(expr: str) -> tuple[Fraction, list[int]]:
    """Value of an expression of int literals and + - * / (exact), and the literals it uses."""
    used: list[int] = []

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in AST_OPS:
            value = AST_OPS[type(node.op)](ev(node.left), ev(node.right))
            assert value.denominator == 1, f"inexact division in {expr!r}"
            return value
        raise ValueError(f"disallowed syntax in {expr!r}: {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval").body), used


def test_countdown_targets_are_reachable_using_each_number_once():
    rows = make_countdown(200, num_numbers=4, max_number=20, seed=1)
    for r in rows:
        value, used = _safe_eval(r["solution"])
        assert value == r["target"] >= 1
        assert sorted(used) == sorted(r["numbers"]) and len(r["numbers"]) == 4
        assert all(1 <= x <= 20 for x in r["numbers"])
        opening = f"Using the numbers {r['numbers']}, create an equation that equals {r['target']}."
        assert r["question"].startswith(opening)
    assert any("/" in r["solution"] for r in rows)  # the exact-division branch is exercised


def test_tasks_are_seeded():
    assert make_arithmetic(30, ops="+-*", seed=1) == make_arithmetic(30, ops="+-*", seed=1)
    assert make_arithmetic(30, ops="+-*", seed=1) != make_arithmetic(30, ops="+-*", seed=2)
    assert make_countdown(30, seed=1) == make_countdown(30, seed=1)
    assert make_countdown(30, seed=1) != make_countdown(30, seed=2)


def test_task_registry():
    assert make_task("countdown", 5, seed=4) == make_countdown(5, seed=4)
    with pytest.raises(DataConfigError, match=r"unknown task 'sudoku'.*'arithmetic', 'countdown'"):
        make_task("sudoku", 5)
    with pytest.raises(DataConfigError, match=r"no option\(s\) \['digits'\]"):
        make_task("countdown", 5, digits=2)
    # a user's own builder by dotted path
    assert make_task("datamodules.tasks.arithmetic.make_arithmetic", 3, seed=1) == make_arithmetic(3, seed=1)
    with pytest.raises(DataConfigError, match="cannot load 'datamodules.tasks.nope.make'"):
        make_task("datamodules.tasks.nope.make", 3)


# ------------------------------------------------------------------------------------ loading
def test_jsonl_json_disk_and_list_sources_give_the_same_rows(tmp_path: Path):
    import datasets

    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in QA) + "\n\n")
    (tmp_path / "qa.json").write_text(json.dumps({"test": QA}))
    datasets.Dataset.from_list(QA).save_to_disk(str(tmp_path / "flat"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(QA)}).save_to_disk(str(tmp_path / "splits"))
    template = "{question}\nAnswer with just the number."
    expected = [{**r, "prompt": r["question"] + "\nAnswer with just the number."} for r in QA]
    for kwargs in ({"rows": QA}, {"source": str(jsonl)}, {"source": str(tmp_path / "qa.json"), "split": "test"},
                   {"source": str(tmp_path / "flat")}, {"source": str(tmp_path / "splits"), "split": "test"}):
        dm = PromptDataModule(**kwargs, template=template)
        dm.setup()
        assert dm.train_rows == expected, kwargs
        assert dm.val_rows == []


def test_template_system_prompt_and_other_columns():
    dm = PromptDataModule(rows=QA[:2], template="Q: {question} (answer {answer})", system_prompt="Be brief.")
    dm.setup()
    assert dm.train_rows[1] == {
        "question": "What is 1 + 2?", "answer": "3", "prompt": "Q: What is 1 + 2? (answer 3)",
        "system_prompt": "Be brief.",
    }
    assert "prompt" not in QA[1]  # the caller's rows are not mutated


def test_prompt_column_and_chat_messages_from_disk(tmp_path: Path):
    import datasets

    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}], "answer": str(i)} for i in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "chat"))
    dm = PromptDataModule(source=str(tmp_path / "chat"), prompt_column="messages")
    dm.setup()
    assert dm.train_rows[2]["prompt"] == [{"role": "user", "content": "hi 2"}]
    assert dm.train_rows[2]["answer"] == "2"


def test_task_source_uses_question_and_seed():
    dm = PromptDataModule(task="arithmetic", task_kwargs={"ops": ["*"]}, num_rows=10, seed=7)
    dm.setup()
    rows = make_arithmetic(10, ops=["*"], seed=7)
    assert [r["prompt"] for r in dm.train_rows] == [r["question"] for r in rows]
    assert [r["answer"] for r in dm.train_rows] == [r["answer"] for r in rows]


def test_max_rows_keeps_the_first_rows():
    dm = PromptDataModule(rows=_rows(10), max_rows=4)
    dm.setup()
    assert [r["id"] for r in dm.train_rows] == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------- held-out
@pytest.mark.parametrize("val_size, n_val", [(5, 5), (0.25, 5), (0.01, 1)])
def test_held_out_split_sizes_disjoint_and_seeded(val_size, n_val):
    def split(seed):
        dm = PromptDataModule(rows=_rows(20), val_size=val_size, seed=seed)
        dm.setup()
        return dm.train_rows, dm.held_out_rows()

    train, val = split(0)
    assert len(val) == n_val and len(train) == 20 - n_val
    assert sorted(_ids(train) + _ids(val)) == list(range(20))
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}
    assert _ids(train) == sorted(_ids(train))  # source order kept
    assert split(0) == (train, val)
    if n_val > 1:
        assert _ids(split(1)[1]) != _ids(val)


def test_held_out_never_shares_a_prompt_with_training():
    rows = [{"prompt": f"p{i % 4}", "id": i} for i in range(12)]  # each prompt three times
    dm = PromptDataModule(rows=rows, val_size=1)
    with pytest.warns(UserWarning, match="dropped 2 training row"):
        dm.setup()
    (val,) = dm.val_rows
    assert len(dm.train_rows) == 9 and all(r["prompt"] != val["prompt"] for r in dm.train_rows)


def test_explicit_held_out_rows_remove_overlap():
    dm = PromptDataModule(rows=_rows(6), val_rows=[{"prompt": "prompt number 2"}, {"prompt": "new"}])
    with pytest.warns(UserWarning, match="dropped 1 training row"):
        dm.setup()
    assert _ids(dm.train_rows) == [0, 1, 3, 4, 5]
    assert [r["prompt"] for r in dm.val_rows] == ["prompt number 2", "new"]


# --------------------------------------------------------------------------------------- errors
def test_missing_prompt_column_lists_columns_and_fixes():
    dm = PromptDataModule(rows=QA)
    with pytest.raises(DataConfigError) as err:
        dm.setup()
    msg = str(err.value)
    assert "'prompt'" in msg and "['question', 'answer']" in msg
    assert "--data.prompt_column" in msg and "--data.template" in msg


def test_empty_prompt_names_the_row():
    rows = _rows(4)
    rows[2]["prompt"] = "   "
    with pytest.raises(DataConfigError, match="row 2 has an empty prompt"):
        PromptDataModule(rows=rows).setup()


def test_template_with_unknown_column_names_column_row_and_columns():
    rows = _rows(3)
    del rows[1]["id"]
    with pytest.raises(DataConfigError) as err:
        PromptDataModule(rows=rows, template="{prompt} #{id}").setup()
    assert "{id}" in str(err.value) and "row 1" in str(err.value) and "['prompt']" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [({}, "exactly one of"), ({"rows": QA, "task": "arithmetic"}, "['rows', 'task']"),
     ({"rows": _rows(3), "val_size": 0.5, "val_rows": _rows(1)}, "not both"),
     ({"rows": _rows(3), "val_size": 1.5}, "val_size=1.5"),
     ({"rows": _rows(3), "val_size": 3}, "lower --data.val_size"),
     ({"rows": []}, "has no rows"), ({"source": "missing/file.jsonl"}, "does not exist"),
     ({"source": "someone/some-dataset"}, "offline")],
)
def test_config_errors(kwargs, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataConfigError) as err:
        PromptDataModule(**kwargs).setup()
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)


def test_too_few_rows_for_a_batch():
    with pytest.raises(DataConfigError, match="batch_size=4 x 1 device"):
        PromptDataModule(rows=_rows(3)).train_dataloader()


# -------------------------------------------------------------------------------------- batches
def test_batches_cover_every_row_once_per_epoch():
    pb = PromptBatches(_rows(12), 3, seed=1)
    assert len(pb) == 4 and isinstance(pb, _Stateful)
    epochs = [sum(_take(pb, 4), []), sum(_take(pb, 4), [])]
    assert all(sorted(e) == list(range(12)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != list(range(12))  # reshuffled each epoch
    assert pb.state_dict()["epoch"] == 2
    assert sum(_take(PromptBatches(_rows(12), 3, shuffle=False), 4), []) == list(range(12))
    partial = PromptBatches(_rows(10), 3, seed=1)  # 10 rows: 3 full batches, one row left out per epoch
    for _ in range(2):
        seen = sum(_take(partial, 3), [])
        assert len(seen) == len(set(seen)) == 9


def test_ranks_take_disjoint_slices_of_the_global_batch():
    r0, r1 = (PromptBatches(_rows(12), 2, seed=3, rank=k, world_size=2) for k in (0, 1))
    assert len(r0) == 3
    both = [a + b for a, b in zip(_take(r0, 3), _take(r1, 3))]
    assert sorted(sum(both, [])) == list(range(12))
    assert both == [b for b in _take(PromptBatches(_rows(12), 4, seed=3), 3)]


@pytest.mark.parametrize("k", [0, 2, 3, 5])
def test_state_dict_resumes_the_exact_batches(k):
    original = PromptBatches(_rows(10), 3, seed=2)
    _take(original, k)
    original.sample_rows(4)
    state = original.state_dict()
    resumed = PromptBatches(_rows(10), 3, seed=2)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # plain values only, as in a checkpoint
    assert _take(resumed, 5) == _take(original, 5)
    assert _ids(resumed.sample_rows(7)) == _ids(original.sample_rows(7))


def test_load_state_dict_refuses_other_data():
    state = PromptBatches(_rows(10), 3).state_dict()
    with pytest.raises(DataConfigError, match="batch_size: 3 -> 2"):
        PromptBatches(_rows(10), 2).load_state_dict(state)
    with pytest.raises(DataConfigError, match="fingerprint"):
        PromptBatches([{**r, "prompt": r["prompt"] + "!"} for r in _rows(10)], 3).load_state_dict(state)


def test_sample_rows_is_seeded_and_independent_of_training_order():
    a, b = PromptBatches(_rows(10), 3, seed=4), PromptBatches(_rows(10), 3, seed=4)
    first = _ids(a.sample_rows(25))
    assert first == _ids(b.sample_rows(25))
    assert sorted(first[:10]) == list(range(10))  # a permutation per refill epoch
    assert first != _ids(PromptBatches(_rows(10), 3, seed=5).sample_rows(25))
    assert _take(a, 4) == _take(PromptBatches(_rows(10), 3, seed=4), 4)  # refills do not move training


# --------------------------------------------------------------------------- Lightning resume
class _Recorder(L.LightningModule):
    """Records each step's batch and one refill row; one dummy parameter, manual optimisation."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen: list[tuple[list[int], list[int]]] = []

    def training_step(self, batch, batch_idx):
        refill = self.trainer.datamodule.sample_rows(1)
        self.seen.append((_ids(batch), _ids(refill)))
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward((self.w**2).sum())
        opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=0.1)


def _fit(dirpath: Path, max_steps: int, ckpt_path: Path | None = None) -> list:
    model = _Recorder()
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=dirpath, filename="{step}", every_n_train_steps=1, save_top_k=-1)],
    )
    trainer.fit(model, datamodule=PromptDataModule(rows=_rows(10), batch_size=3, seed=5), ckpt_path=ckpt_path)
    assert trainer.global_step == max_steps
    return model.seen


@pytest.mark.filterwarnings("ignore:.*no pre-optimization state was saved")
@pytest.mark.parametrize("stop_at", [2, 3])  # mid-epoch, and at the end of an epoch (3 batches per epoch)
def test_lightning_resume_sees_the_batches_of_a_straight_run(tmp_path: Path, stop_at: int):
    straight = _fit(tmp_path / "straight", 5)
    first = _fit(tmp_path / "resumed", stop_at)
    ckpt = tmp_path / "resumed" / f"step={stop_at}.ckpt"
    assert torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["epoch"] == (
        stop_at // 3
    )
    with pytest.warns(UserWarning, match="Checkpoint directory .*resumed exists and is not empty"):
        second = _fit(tmp_path / "resumed", 5, ckpt_path=ckpt)  # resumes where the first run saved, as a user does
    assert first + second == straight
    epoch0 = sum((batch for batch, _ in straight[:3]), [])
    assert len(set(epoch0)) == 9  # the first epoch's three batches are distinct rows


def test_cli_help_documents_every_option():
    import inspect

    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PromptDataModule, "data")
    helps = {a.dest: a.help for a in parser._actions if a.dest.startswith("data.")}
    for name in inspect.signature(PromptDataModule).parameters:
        assert helps.get(f"data.{name}", "").strip(), f"--data.{name} has no help text"
