"""The image recipes on a real language model, on CPU: what a step costs, and whether a short alignment stage of the
(random) vision tower makes a recipe's reward rise.

The model is the assembled `smolvlm2-135m-untrained` (the packaged SmolLM2-135M-Instruct in SmolVLM's Idefics3
architecture, random vision tower and connector; `modules.models.smolvlm`). Three measurements, in one process:

1. Cost: wall seconds per training step of GUI-G1 and 360-R1 (LoRA r 16 on the LM, 2 prompts x G 4, 32 new tokens).
2. Alignment: the vision tower and connector train (LM frozen) to caption synthetic panoramas ("Objects from left to
   right: red circle, blue square, ..."), teacher-forced, `--align-steps` AdamW steps; the caption loss is reported.
3. Does it help RL? 360-R1 from the untrained and from the aligned tower, `--rl-steps` steps each; held-out answer
   accuracy / similarity / reward (greedy, `--eval-rows` panoramas) before and after.

    python benchmarks/vlm_real_model.py [--align-steps 60] [--rl-steps 8] [--out benchmarks/results/vlm_real_model.json]

Takes about 30-45 minutes on 2 CPU cores (most of it the alignment steps: the backward runs through the 30 frozen
LM layers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def caption(row: dict) -> str:
    return "Objects from left to right: " + ", ".join(o["name"] for o in row["objects"]) + "."


def caption_loss(policy, chunk: list[dict], images: list):
    """Mean token NLL of each row's caption given `images` (the rows' own, or another row's for the control)."""
    import torch

    from modules.vision import encode_prompts

    tok = policy.tokenizer
    enc = encode_prompts(policy.processor, ["Describe the image."] * len(chunk), images, [None] * len(chunk))
    targets = [tok(caption(r) + tok.eos_token, add_special_tokens=False)["input_ids"] for r in chunk]
    width = max(map(len, targets))
    ids = torch.full((len(chunk), width), tok.pad_token_id)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for i, t in enumerate(targets):
        ids[i, :len(t)] = torch.tensor(t)
        mask[i, :len(t)] = 1
    logps, _ = policy.token_logps(enc.ids, enc.mask, ids, mask, vision=enc.vision)
    return -(logps * mask).sum() / mask.sum()


def held_out_caption_losses(policy, rows: list[dict]) -> dict:
    """Caption NLL on held-out panoramas with their own images, and with the images rotated one row (the control:
    equal losses mean the image tokens carry no information the LM uses)."""
    import torch

    with torch.no_grad():
        own = float(caption_loss(policy, rows, [r["images"] for r in rows]))
        shuffled = float(caption_loss(policy, rows, [r["images"] for r in rows[1:] + rows[:1]]))
    return {"own_images": own, "other_images": shuffled}


def align(path: str, out: Path, steps: int, batch: int, lr: float, seed: int) -> dict:
    """Train the vision tower + connector to caption panoramas (LM frozen); save the model to `out`."""
    import torch

    from datamodules.tasks import make_task
    from modules.policy import Policy
    from modules.vision import VisionSettings

    torch.manual_seed(seed)
    policy = Policy.from_pretrained(path, vision=VisionSettings(train_tower=True))
    model = policy.model
    for name, p in model.named_parameters():  # the LM (and its tied head) stays as SmolLM2 made it
        p.requires_grad_(name.startswith(("model.vision_model.", "model.connector.")))
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=lr)
    rows = make_task("panorama", steps * batch, seed=seed + 1)
    held_out = make_task("panorama", 16, seed=seed + 2)
    before = held_out_caption_losses(policy, held_out)
    losses, started = [], time.perf_counter()
    model.train()
    for step in range(steps):
        chunk = rows[step * batch:(step + 1) * batch]
        loss = caption_loss(policy, chunk, [r["images"] for r in chunk])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        print(f"align step {step + 1}/{steps}: caption loss {losses[-1]:.3f} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    model.eval()
    after = held_out_caption_losses(policy, held_out)
    policy.save_pretrained(out)
    return {"held_out_before": before, "held_out_after": after,
            "steps": steps, "batch": batch, "lr": lr, "loss_first5": sum(losses[:5]) / min(5, len(losses)),
            "loss_last5": sum(losses[-5:]) / min(5, len(losses)), "seconds": time.perf_counter() - started,
            "seconds_per_step": (time.perf_counter() - started) / max(steps, 1)}


def rl(recipe: str, path: str, steps: int, eval_rows: int, seed: int, tmp: Path) -> dict:
    """`steps` GRPO steps of `recipe` from `path` (LoRA); held-out metrics before and after; seconds per step."""
    import lightning as L
    import torch

    from datamodules import PromptDataModule

    L.seed_everything(seed, verbose=False)
    if recipe == "gui_g1":
        from recipes.gui_g1 import GUIG1 as cls

        rewards, task = ["gui_hit", "gui_iou", "gui_box"], "gui_screens"
        extra = {}
    else:
        from recipes.omni_r1 import OmniR1 as cls

        rewards = ["omni_reasoning", "omni_answer", "omni_format",
                   {"name": "accuracy", "weight": 0.0, "kwargs": {"extract": "answer_tag", "mode": "exact"}}]
        task, extra = "panorama", {}
    model = cls(path, rewards, lora={"r": 16, "alpha": 32}, num_generations=4,
                sampling={"max_new_tokens": 32, "temperature": 0.9}, optimizer={"learning_rate": 5e-5}, **extra)
    data = PromptDataModule(task=task, num_rows=steps * 2 + eval_rows + 8, val_size=eval_rows, batch_size=2,
                            seed=seed)
    data.setup()
    before = model.evaluate(data.held_out_rows(), batch_size=8)
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *a):
            self.t = time.perf_counter()

        def on_train_batch_end(self, *a):
            times.append(time.perf_counter() - self.t)

    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=str(tmp), callbacks=[Timer()], enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    after = model.evaluate(data.held_out_rows(), batch_size=8)
    keys = [k for k in before if k in after]
    return {"steps": steps, "seconds_per_step": sorted(times)[len(times) // 2] if times else None,
            "before": {k: before[k] for k in keys}, "after": {k: after[k] for k in keys},
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--align-steps", type=int, default=60)
    parser.add_argument("--align-batch", type=int, default=8)
    parser.add_argument("--align-lr", type=float, default=1e-3)
    parser.add_argument("--rl-steps", type=int, default=8)
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/vlm_real_model.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)  # the 135M LM gains from 2 threads (VISION-NOTES)
    from modules.models.registry import resolve_model_path

    started = time.perf_counter()
    path = resolve_model_path("smolvlm2-135m-untrained")
    result: dict = {"model": "smolvlm2-135m-untrained", "build_s": time.perf_counter() - started}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result["gui_g1_cost"] = rl("gui_g1", path, 2, 8, args.seed, tmp / "g")
        print(json.dumps(result["gui_g1_cost"], indent=1), flush=True)
        result["omni_r1_untrained"] = rl("omni_r1", path, args.rl_steps, args.eval_rows, args.seed, tmp / "u")
        print(json.dumps(result["omni_r1_untrained"], indent=1), flush=True)
        result["alignment"] = align(path, tmp / "aligned", args.align_steps, args.align_batch, args.align_lr,
                                    args.seed)
        print(json.dumps(result["alignment"], indent=1), flush=True)
        result["omni_r1_aligned"] = rl("omni_r1", str(tmp / "aligned"), args.rl_steps, args.eval_rows, args.seed,
                                       tmp / "a")
        print(json.dumps(result["omni_r1_aligned"], indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
