"""Prompt datasets for RL: rows from JSONL/JSON, a `datasets` directory or hub name, a Python list or a
synthetic task; a held-out split that never shares a prompt with training; resumable seeded batches."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.errors import DataConfigError
from datamodules.tasks import make_task

_TRUE = {"1", "true", "yes", "on"}


# ----------------------------------------------------------------------------------------------- loading
def _hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _read_text(path: Path) -> str:
    """The file as UTF-8; an undecodable byte is one line naming the file, the line and the fix."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataConfigError(f"source {str(path)!r}: line {line} is not UTF-8 (byte {data[err.start]:#04x} at "
                              f"offset {err.start}); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _read_json_file(path: Path, split: str) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataConfigError(f"source {str(path)!r}: line {line_no} is not valid JSON ({err})") from None
        return rows
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataConfigError(f"source {str(path)!r}: not valid JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get(split), list):
        return data[split]
    if isinstance(data, list):
        return data
    raise DataConfigError(
        f"source {str(path)!r}: a .json file must hold a list of row objects or {{{split!r}: [rows]}}; "
        f"found a {type(data).__name__}" + (f" with keys {sorted(data)}" if isinstance(data, dict) else "")
    )


def load_rows(source: str, *, split: str = "train", subset: str | None = None) -> list[dict]:
    """Rows of a `.jsonl`/`.json` file, a directory saved with `datasets` `save_to_disk`, or a hub dataset."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in (".jsonl", ".json"):
            raise DataConfigError(
                f"source {source!r}: unsupported file type {path.suffix!r}; use .jsonl, .json or a directory "
                "saved with datasets' save_to_disk"
            )
        return _read_json_file(path, split)
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise DataConfigError(
                f"source {source!r} is a directory but not one saved with datasets' save_to_disk ({err})"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataConfigError(f"source {source!r} has splits {list(ds)}, not {split!r}; set --data.split")
            ds = ds[split]
        return ds.to_list()
    if path.suffix in (".jsonl", ".json") or source.startswith((".", "/", "~")):
        raise DataConfigError(f"source {source!r} does not exist; give an existing .jsonl/.json file or directory")
    if _hub_offline():
        raise DataConfigError(
            f"source {source!r} is not a local file or directory, and the hub is offline "
            "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set); give a local path, or unset it to load from the hub"
        )
    import datasets

    try:
        return datasets.load_dataset(source, subset, split=split).to_list()
    except Exception as err:  # noqa: BLE001 - re-raised with the source named
        raise DataConfigError(
            f"could not load hub dataset {source!r} (subset {subset!r}, split {split!r}): {err}"
        ) from err


# ---------------------------------------------------------------------------------------------- checking
def _check_prompt(prompt: Any, index: int, what: str) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataConfigError(f"{what} row {index} has an empty prompt; remove the row or fix its text")
        return
    if isinstance(prompt, list) and prompt:  # chat messages
        for m in prompt:
            if not (isinstance(m, dict) and "role" in m and "content" in m):
                raise DataConfigError(
                    f"{what} row {index}: a list prompt must be chat messages "
                    f"[{{'role': ..., 'content': ...}}, ...]; found element {m!r}"
                )
        return
    raise DataConfigError(
        f"{what} row {index}: the prompt must be non-empty text or chat messages, found {prompt!r}"
    )


def prepare_rows(
    rows: list[dict],
    *,
    prompt_column: str = "prompt",
    template: str | None = None,
    system_prompt: str | None = None,
    what: str = "data",
) -> list[dict]:
    """Copies of `rows`, each with a checked `"prompt"` (from `template` or `prompt_column`) and, when given,
    `"system_prompt"`; every other column is kept. `what` names the data in errors."""
    if not rows:
        raise DataConfigError(f"{what} has no rows; check the source, --data.split or --data.max_rows")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataConfigError(f"{what} row {i} is a {type(row).__name__}, not a dict of columns")
        if template is not None:
            try:
                prompt = template.format(**row)
            except KeyError as err:
                raise DataConfigError(
                    f"--data.template uses column {{{err.args[0]}}} but {what} row {i} has no such column; "
                    f"columns found: {list(row)}"
                ) from None
            except (IndexError, ValueError) as err:
                raise DataConfigError(
                    f"--data.template={template!r} is not a valid {{column}} format string ({err}); "
                    "write literal braces as {{ and }}"
                ) from None
        elif prompt_column in row:
            prompt = row[prompt_column]
        else:
            raise DataConfigError(
                f"{what} row {i} has no prompt column {prompt_column!r}; columns found: {list(row)}. "
                f"Set --data.prompt_column to one of them, or --data.template to build the prompt "
                "(e.g. --data.template '{question}')"
            )
        _check_prompt(prompt, i, what)
        new = {**row, "prompt": prompt}
        if system_prompt is not None:
            new["system_prompt"] = system_prompt
        out.append(new)
    return out


# ------------------------------------------------------------------------------------------ held-out split
def _prompt_key(row: dict) -> str:
    """What makes two prompts the same: the text (or messages) and, for image or video rows, the pixels of their
    `images` / `frames` (one instruction over two different screens is two prompts)."""
    p = row["prompt"]
    key = p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str)
    visuals = [v for name in ("images", "frames") if (v := row.get(name)) is not None]
    if not visuals:
        return key
    import hashlib

    digest = hashlib.sha256()
    for value in visuals:
        for image in value if isinstance(value, (list, tuple)) else [value]:
            digest.update(image.tobytes() if hasattr(image, "tobytes") else str(image).encode())
    return f"{key}\0{digest.hexdigest()}"


def held_out_count(val_size: int | float, num_rows: int) -> int:
    """Rows to hold out: `val_size` itself when an int, else round(val_size * num_rows), at least 1."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise DataConfigError(f"--data.val_size={val_size!r} must be a row count (int) or a fraction in [0, 1)")
    if isinstance(val_size, int):
        if val_size < 0:
            raise DataConfigError(f"--data.val_size={val_size} must be >= 0")
        return val_size
    if not 0.0 <= val_size < 1.0:
        raise DataConfigError(f"--data.val_size={val_size} is a fraction outside [0, 1); give an int for a count")
    return max(1, round(val_size * num_rows)) if val_size > 0 else 0


def drop_overlap(train: list[dict], held_out: list[dict]) -> list[dict]:
    """`train` without the rows whose prompt also appears in `held_out` (warns with the count)."""
    keys = {_prompt_key(r) for r in held_out}
    kept = [r for r in train if _prompt_key(r) not in keys]
    if len(kept) < len(train):
        rank_zero_warn(f"dropped {len(train) - len(kept)} training row(s) whose prompt is also a held-out prompt")
    if not kept:
        raise DataConfigError("no training rows remain once the held-out prompts are removed; hold out fewer rows")
    return kept


def split_held_out(rows: list[dict], val_size: int | float, *, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held_out): `held_out_count(val_size)` rows with distinct prompts chosen with `seed`; training
    keeps the other rows minus any sharing a prompt with a held-out row. Both keep the source order."""
    n_val = held_out_count(val_size, len(rows))
    if n_val == 0:
        return list(rows), []
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(_prompt_key(row), i)
    if n_val >= len(first):
        raise DataConfigError(
            f"--data.val_size={val_size} asks for {n_val} held-out rows but the data has {len(first)} distinct "
            "prompts and training needs at least one; lower --data.val_size"
        )
    chosen = sorted(random.Random(f"held-out:{seed}").sample(sorted(first.values()), n_val))
    held_out, chosen_set = [rows[i] for i in chosen], set(chosen)
    return drop_overlap([r for i, r in enumerate(rows) if i not in chosen_set], held_out), held_out


# ------------------------------------------------------------------------------------------------ batches
class PromptBatches:
    """Seeded, resumable batches of prompt rows (a plain iterable; a batch is a `list[dict]`).

    Each `iter()` yields the rest of the current epoch, then the next `iter()` starts the next epoch, in the
    order of a permutation seeded by (seed, epoch). Rank `rank` of `world_size` takes its own `batch_size`
    slice of each global batch; the last partial global batch is dropped. `state_dict()` holds (epoch,
    position) and the refill stream's place, so a fresh object given `load_state_dict` continues exactly.
    Lightning detects this through its `_Stateful` protocol (`state_dict` and `load_state_dict` methods),
    saves `state_dict()` in the checkpoint and calls `load_state_dict` before `iter()` on resume.
    """

    def __init__(
        self, rows: list[dict], batch_size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise DataConfigError(f"--data.batch_size={batch_size} must be >= 1")
        if not 0 <= rank < world_size:
            raise DataConfigError(f"PromptBatches: rank={rank} must be in [0, world_size={world_size})")
        if len(rows) < batch_size * world_size:
            raise DataConfigError(
                f"--data.batch_size={batch_size} x {world_size} device(s) needs at least {batch_size * world_size} "
                f"training rows but there are {len(rows)}; lower --data.batch_size or add rows"
            )
        self.rows, self.batch_size, self.seed, self.shuffle = list(rows), batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = self.position = 0  # next training batch: `position`-th of epoch `epoch`
        self.refill_epoch = self.refill_position = 0  # next refill row
        self._fingerprint = hashlib.sha1("\n".join(map(_prompt_key, self.rows)).encode()).hexdigest()
        self._orders: dict[str, tuple[int, list[int]]] = {}  # stream -> (epoch, permutation)

    def __len__(self) -> int:
        """Full batches per epoch."""
        return len(self.rows) // (self.batch_size * self.world_size)

    def _order(self, stream: str, epoch: int, shuffle: bool) -> list[int]:
        if self._orders.get(stream, (None,))[0] != epoch:
            order = list(range(len(self.rows)))
            if shuffle:
                random.Random(f"{stream}:{self.seed}:{epoch}").shuffle(order)
            self._orders[stream] = (epoch, order)
        return self._orders[stream][1]

    def __iter__(self):
        epoch = self.epoch
        step = self.batch_size * self.world_size
        while self.epoch == epoch:
            order = self._order("train", epoch, self.shuffle)
            start = self.position * step + self.rank * self.batch_size
            batch = [dict(self.rows[i]) for i in order[start : start + self.batch_size]]
            self.position += 1  # advance before yielding: state_dict() then counts this batch as seen
            if self.position >= len(self):
                self.epoch, self.position = self.epoch + 1, 0
            yield batch

    def sample_rows(self, k: int) -> list[dict]:
        """`k` extra rows from an independent, always-shuffled seeded stream (refilling dropped groups)."""
        out = []
        for _ in range(k):
            order = self._order(f"refill-{self.rank}", self.refill_epoch, True)
            out.append(dict(self.rows[order[self.refill_position]]))
            self.refill_position += 1
            if self.refill_position >= len(self.rows):
                self.refill_epoch, self.refill_position = self.refill_epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        """Where both streams stand, plus what they were built from (checked on load)."""
        return {
            "epoch": self.epoch, "position": self.position,
            "refill_epoch": self.refill_epoch, "refill_position": self.refill_position,
            "num_rows": len(self.rows), "batch_size": self.batch_size, "world_size": self.world_size,
            "seed": self.seed, "shuffle": self.shuffle, "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from `state_dict`; refuses a state saved over other rows, batch size, seed or order."""
        mine = self.state_dict()
        changed = [f"{k}: {state_dict[k]!r} -> {mine[k]!r}" for k in
                   ("num_rows", "batch_size", "world_size", "seed", "shuffle", "fingerprint")
                   if k in state_dict and state_dict[k] != mine[k]]
        if changed:
            raise DataConfigError(
                "the checkpoint's data order does not match this run's data (" + "; ".join(changed) + "); "
                "resume with the same data options, or start a fresh run without ckpt_path"
            )
        self.epoch, self.position = state_dict["epoch"], state_dict["position"]
        self.refill_epoch, self.refill_position = state_dict["refill_epoch"], state_dict["refill_position"]


# ------------------------------------------------------------------------------------------ datamodule
class PromptDataModule(LightningDataModule):
    """Prompts for RL fine-tuning from a file, a hub dataset, a Python list or a synthetic task.

    After `setup()`, `train_rows` and `val_rows` are lists of dict rows, each with `"prompt"` (text, or chat
    messages when the source holds messages) and every other column.

    Args:
        source: A `.jsonl`/`.json` file, a directory saved with `datasets` `save_to_disk`, or a hub dataset
            name (hub only when not offline). Give exactly one of source, rows, task.
        rows: The rows as a Python list of dicts.
        task: A synthetic task: a registered name (datamodules.tasks.TASKS: arithmetic, countdown, ...) or the
            dotted path of a builder `fn(n, *, seed, ...) -> rows`; its prompt defaults to the `question` column.
        task_kwargs: Options of the synthetic task, e.g. {digits: 2, ops: [+, -]}; its seed defaults to `seed`.
        num_rows: Rows to generate for a synthetic task.
        split: Split to read from a `DatasetDict` directory, a hub dataset or a `{split: rows}` .json file.
        subset: Hub dataset configuration name (e.g. `main` for openai/gsm8k).
        prompt_column: Column holding the prompt (text or chat messages) when no template is given.
        template: A `{column}` format string building the prompt text from a row, e.g.
            "{question}\\nAnswer with just the number." (write literal braces as {{ }}).
        system_prompt: System prompt stored in each row's `system_prompt` column for the chat template.
        val_size: Held-out rows: a count (int) or a fraction (float); chosen with `seed`, never sharing a
            prompt with training.
        val_rows: Explicit held-out rows (instead of val_size); training rows with the same prompt are dropped.
        val_source: Explicit held-out data as a path or hub name, read like `source`.
        batch_size: Prompts per training step (per device).
        seed: Seed of the held-out split, the per-epoch order, the refill stream and synthetic tasks.
        shuffle: Shuffle the training order each epoch (seeded by seed and epoch).
        max_rows: Keep only the first max_rows rows of the source, before the held-out split.
    """

    def __init__(
        self,
        source: str | None = None,
        rows: list[dict] | None = None,
        task: str | None = None,
        task_kwargs: dict | None = None,
        num_rows: int = 256,
        split: str = "train",
        subset: str | None = None,
        prompt_column: str = "prompt",
        template: str | None = None,
        system_prompt: str | None = None,
        val_size: int | float = 0,
        val_rows: list[dict] | None = None,
        val_source: str | None = None,
        batch_size: int = 4,
        seed: int = 0,
        shuffle: bool = True,
        max_rows: int | None = None,
    ) -> None:
        super().__init__()
        given = [name for name, value in (("source", source), ("rows", rows), ("task", task)) if value is not None]
        if len(given) != 1:
            raise DataConfigError(
                f"PromptDataModule needs exactly one of --data.source, --data.rows, --data.task; got "
                f"{given or 'none'}"
            )
        if val_rows is not None and val_source is not None:
            raise DataConfigError("give --data.val_rows or --data.val_source, not both")
        if (val_rows is not None or val_source is not None) and held_out_count(val_size, 1) > 0:
            raise DataConfigError("give --data.val_size or explicit --data.val_rows/--data.val_source, not both")
        if max_rows is not None and max_rows < 1:
            raise DataConfigError(f"--data.max_rows={max_rows} must be >= 1 (or unset)")
        if batch_size < 1:
            raise DataConfigError(f"--data.batch_size={batch_size} must be >= 1")
        self.source, self.rows, self.task, self.task_kwargs = source, rows, task, dict(task_kwargs or {})
        self.num_rows, self.split, self.subset = num_rows, split, subset
        self.prompt_column, self.template, self.system_prompt = prompt_column, template, system_prompt
        self.val_size, self.val_source, self._explicit_val_rows = val_size, val_source, val_rows
        self.batch_size, self.seed, self.shuffle, self.max_rows = batch_size, seed, shuffle, max_rows
        self.train_rows: list[dict] = []
        self.val_rows: list[dict] = []
        self._is_setup = False
        self._batches: PromptBatches | None = None

    def _source_rows(self) -> tuple[list[dict], str]:
        if self.rows is not None:
            return list(self.rows), "--data.rows"
        if self.task is not None:
            return make_task(self.task, self.num_rows, **{"seed": self.seed, **self.task_kwargs}), f"task {self.task!r}"
        return load_rows(self.source, split=self.split, subset=self.subset), f"source {self.source!r}"

    def setup(self, stage: str | None = None) -> None:
        """Load, render and check the rows, and split off the held-out rows (once; later calls do nothing)."""
        if self._is_setup:
            return
        rows, what = self._source_rows()
        if self.max_rows is not None:
            rows = rows[: self.max_rows]
        template = self.template
        if template is None and self.task is not None and self.prompt_column not in (rows[0] if rows else {}):
            template = "{question}"
        render = dict(prompt_column=self.prompt_column, template=template, system_prompt=self.system_prompt)
        rows = prepare_rows(rows, what=what, **render)
        if self._explicit_val_rows is not None or self.val_source is not None:
            val = self._explicit_val_rows
            if val is None:
                val = load_rows(self.val_source, split=self.split, subset=self.subset)
            self.val_rows = prepare_rows(list(val), what="held-out data", **render)
            self.train_rows = drop_overlap(rows, self.val_rows)
        else:
            self.train_rows, self.val_rows = split_held_out(rows, self.val_size, seed=self.seed)
        self._is_setup = True

    def train_dataloader(self) -> PromptBatches:
        """A fresh `PromptBatches` over `train_rows`, sharded by the trainer's rank when one is attached."""
        self.setup("fit")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self._batches = PromptBatches(
            self.train_rows, self.batch_size, seed=self.seed, shuffle=self.shuffle, rank=rank, world_size=world
        )
        return self._batches

    def sample_rows(self, k: int) -> list[dict]:
        """`k` refill rows from the refill stream of the loader Lightning holds (see `PromptBatches`)."""
        if self._batches is None:
            self.train_dataloader()
        return self._batches.sample_rows(k)

    def held_out_rows(self) -> list[dict]:
        """The held-out rows (for the evaluation callback)."""
        self.setup("validate")
        return self.val_rows
