"""The GRPO loop end to end on the tiny model: weights move, metrics are finite, resume is exact,
micro-batching does not change the gradient, DAPO dynamic sampling refills, bad rewards fail loudly."""

from __future__ import annotations

import math
import zlib

import lightning as L
import pandas as pd
import pytest
import torch

from datamodules import PromptDataModule
from modules.rewards import RewardError
from recipes.grpo import GRPO

ROWS = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(1, 9) for b in range(1, 5)]


def digit_share(prompts, completions, **_):
    """A reward with real variance on a random model: the share of digit characters."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def hashed(prompts, completions, **_):
    """Deterministic pseudo-random reward in [0, 1) per completion; constant for prompts marked 'flat'."""
    return [1.0 if "flat" in p else (zlib.crc32(c.encode()) % 1000) / 1000 for p, c in zip(prompts, completions)]


def _recipe(path, rewards=(digit_share,), **kw) -> GRPO:
    defaults = dict(model_name_or_path=path, rewards=list(rewards), num_generations=4,
                    batching={"micro_batch_size": 4}, optimizer={"learning_rate": 1e-2},
                    sampling={"max_new_tokens": 8, "temperature": 1.0})
    for key, value in kw.items():  # a settings group given as a dict adds to the defaults above
        defaults[key] = {**defaults[key], **value} if isinstance(defaults.get(key), dict) else value
    if isinstance(defaults["sampling"], dict):
        from modules.rollout.engine import SamplingSettings

        defaults["sampling"] = SamplingSettings(**defaults["sampling"])
    return GRPO(**defaults)


def _trainer(tmp_path, max_steps, **kw) -> L.Trainer:
    from lightning.pytorch.loggers import CSVLogger

    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, log_every_n_steps=1,
                     enable_progress_bar=False, enable_model_summary=False, logger=CSVLogger(tmp_path, name="logs"),
                     default_root_dir=tmp_path, **kw)


def _data(rows=ROWS, **kw) -> PromptDataModule:
    return PromptDataModule(rows=list(rows), batch_size=kw.pop("batch_size", 2), seed=0, **kw)


def _metrics(trainer) -> pd.DataFrame:
    return pd.read_csv(f"{trainer.logger.log_dir}/metrics.csv")


def test_two_steps_change_weights_and_log_finite_metrics(tiny_model_path, tmp_path):
    L.seed_everything(0)
    recipe = _recipe(tiny_model_path, objective={"beta": 0.04}, batching={"num_iterations": 2})
    before = {n: p.detach().clone() for n, p in recipe.policy.model.named_parameters()}
    trainer = _trainer(tmp_path, max_steps=4, enable_checkpointing=False)  # 2 generation steps x 2 iterations
    trainer.fit(recipe, _data())
    changed = [n for n, p in recipe.policy.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before), "every weight of a full fine-tune should move"
    logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
    for key in ("train/reward", "train/rewards/digit_share/mean", "train/kl", "train/entropy", "train/loss",
                "train/clip_ratio/region_mean", "train/completion_length", "train/tokens_per_s/generate",
                "train/tokens_per_s/train", "train/grad_norm", "train/advantage_std", "train/truncated_ratio"):
        assert key in logged, f"{key} was not logged"
    assert all(math.isfinite(v) for v in logged.values()), logged
    rollout = recipe.last_rollout
    assert rollout.old_logps is not None and rollout.ref_logps is not None  # num_iterations > 1, beta > 0
    assert logged["train/kl"] > 0  # the second step starts from moved weights
    df = _metrics(trainer)
    assert df["train/reward"].notna().sum() == 2  # one log row per generation step


def test_chunked_logits_and_shared_prefill_log_every_metric_of_the_plain_path(tiny_model_path, tmp_path):
    """The memory and sampling optimisations (LM head in chunks of 3 tokens, one prefill per group) against the plain
    path (all logits at once, G prefills per prompt): the same samples, the same set of logged metrics, the same
    values (loss, KL, entropy with a gradient through it, grad norm) and the same weights after 2 x 2 steps."""
    runs = {}
    for name, chunk, share in (("plain", 0, False), ("optimised", 3, True)):
        L.seed_everything(0)
        recipe = _recipe(tiny_model_path, objective={"beta": 0.04, "entropy_coef": 0.01},
                         batching={"num_iterations": 2, "logit_chunk_size": chunk})
        recipe.rollout_engine.share_prompt_prefill = share
        before = {n: p.detach().clone() for n, p in recipe.policy.model.named_parameters()}
        trainer = _trainer(tmp_path / name, max_steps=4, enable_checkpointing=False)
        trainer.fit(recipe, _data())
        assert recipe.rollout_engine.uses_shared_prefill(recipe.last_rollout.prompt_mask, 4) == share
        assert (recipe.policy.logit_chunk_size is not None) == share
        runs[name] = (recipe, {k: float(v) for k, v in trainer.logged_metrics.items()})
    (plain, plain_logged), (fast, fast_logged) = runs["plain"], runs["optimised"]
    assert plain.last_rollout.completions == fast.last_rollout.completions
    assert set(fast_logged) == set(plain_logged)
    for key in ("train/loss", "train/kl", "train/entropy", "train/grad_norm", "train/reward"):
        assert fast_logged[key] == pytest.approx(plain_logged[key], rel=1e-4, abs=1e-6), key
    # Adam divides by sqrt(v): a gradient entry near 0 turns a 1e-7 difference into up to lr per step, so the
    # weights are compared by their total movement, not entry by entry
    for (n, p), (_, q) in zip(plain.policy.model.named_parameters(), fast.policy.model.named_parameters()):
        moved = float((p - before[n]).norm())
        assert moved > 0 and float((q - p).norm()) <= 0.01 * moved, n


def test_resume_equals_straight_run(tiny_model_path, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root, steps, ckpt=None):
        L.seed_everything(0)
        recipe = _recipe(tiny_model_path)
        cb = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1, save_last=True)
        trainer = _trainer(root, max_steps=steps, callbacks=[cb])
        trainer.fit(recipe, _data(), ckpt_path=ckpt)
        return recipe, _metrics(trainer)

    straight, m4 = run(tmp_path / "straight", 4)
    _, m2 = run(tmp_path / "first", 2)
    resumed, m_resumed = run(tmp_path / "first", 4, ckpt=str(tmp_path / "first" / "ckpt" / "last.ckpt"))
    for key in ("train/reward", "train/loss", "train/completion_length"):
        straight_vals = m4[key].dropna().tolist()
        assert m2[key].dropna().tolist() == pytest.approx(straight_vals[:2], rel=1e-5)
        assert m_resumed[key].dropna().tolist()[-2:] == pytest.approx(straight_vals[2:], rel=1e-5)
    for (n, a), (_, b) in zip(straight.policy.model.named_parameters(), resumed.policy.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=f"{n} differs after resume")


def test_lora_checkpoint_holds_only_adapter_weights(tiny_model_path, tmp_path):
    from modules.policy import LoraSettings

    L.seed_everything(0)
    recipe = _recipe(tiny_model_path, lora=LoraSettings(r=2, alpha=4))
    trainer = _trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    trainer.fit(recipe, _data())
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    state = torch.load(tmp_path / "lora.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_micro_batching_does_not_change_the_gradient(tiny_model_path, loss_type):
    """Accumulating over micro-batches gives the mini-batch gradient. bnpo (TRL's token mean per micro-batch) is
    exact only when the micro-batches hold equal token counts, so it is checked against its own definition: rows of
    different lengths make its token mean differ from grpo's mean of per-row means."""
    L.seed_everything(0)
    recipe = _recipe(tiny_model_path, objective={"loss_type": loss_type})
    rows = ROWS[:2]
    rollout = recipe.generate_and_score(rows, purpose="train", num_generations=recipe.num_generations)
    rollout.advantages, _ = recipe.compute_advantages(rollout)
    if loss_type == "bnpo":  # rows of 1, 2, ... trained tokens, each with its own non-zero advantage
        n, t = rollout.completion_mask.shape
        lengths = torch.arange(n) % t + 1
        rollout.completion_mask = rollout.completion_mask * (torch.arange(t)[None, :] < lengths[:, None])
        rollout.advantages = torch.linspace(-1.0, 1.0, n)  # n = 8: no zero
    grads = []
    for micro in (8, 2):
        recipe.policy.model.zero_grad()
        for mb in rollout.micro_batches(micro):
            loss, _ = recipe.loss(mb, mini_rows=len(rollout), mini_tokens=int(rollout.completion_mask.sum()))
            loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in recipe.policy.trainable_parameters()]))
    if loss_type != "bnpo":
        torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
        return

    def token_losses(mb):  # one iteration: the ratio is 1 with a gradient, nothing is clipped
        logps, _ = recipe.policy.token_logps(mb.prompt_ids, mb.prompt_mask, mb.completion_ids,
                                             mb.completion_attention_mask, temperature=recipe.sampling.temperature)
        old = logps.detach() if mb.old_logps is None else mb.old_logps
        mask = mb.completion_mask.to(logps.dtype)
        return -mb.advantages[:, None] * torch.exp(logps - old) * mask, mask

    def token_mean(mb):
        token, mask = token_losses(mb)
        return token.sum() / mask.sum()

    def gradient(loss):
        recipe.policy.model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in recipe.policy.trainable_parameters()])

    token, mask = token_losses(rollout)
    assert len(set(mask.sum(-1).tolist())) > 1  # rows of different lengths: the normalisations differ
    sequence_mean = gradient((token.sum(-1) / mask.sum(-1)).mean())  # grpo's
    torch.testing.assert_close(grads[0], gradient(token_mean(rollout)), atol=1e-6, rtol=1e-4)
    assert not torch.allclose(grads[0], sequence_mean, atol=1e-5, rtol=1e-3)
    # micro-batched: each micro-batch's own token mean, weighted by its share of the rows
    micros = rollout.micro_batches(2)
    assert len({int(mb.completion_mask.sum()) for mb in micros}) > 1
    per_micro = sum(len(mb) / len(rollout) * token_mean(mb) for mb in micros)
    torch.testing.assert_close(grads[1], gradient(per_micro), atol=1e-6, rtol=1e-4)
    assert not torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-3)


def test_dynamic_sampling_drops_flat_groups_and_refills(tiny_model_path, tmp_path):
    rows = [{"prompt": f"flat prompt {i}"} for i in range(8)] + [{"prompt": f"Say {i}"} for i in range(8)]
    L.seed_everything(0)
    recipe = _recipe(tiny_model_path, rewards=[hashed], batching={"dynamic_sampling": True, "max_refill_rounds": 8}, accuracy_reward=None)
    trainer = _trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    trainer.fit(recipe, _data(rows, batch_size=4))
    rollout = recipe.last_rollout
    assert len(rollout) == 4 * 4  # refilled back to B groups of G
    assert not any("flat" in p for p in rollout.prompts)
    per_group = rollout.rewards.view(-1, 4)  # (B, G)
    assert bool((per_group.max(1).values > per_group.min(1).values).all())
    assert float(trainer.logged_metrics["train/dynamic_sampling/groups"]) == 4.0


def test_mask_truncated_completions_removes_them_from_the_loss(tiny_model_path, tmp_path):
    L.seed_everything(0)
    recipe = _recipe(tiny_model_path, objective={"mask_truncated_completions": True}, sampling={"max_new_tokens": 3})
    trainer = _trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    trainer.fit(recipe, _data())
    rollout = recipe.last_rollout
    assert bool(rollout.truncated.any())
    assert int(rollout.completion_mask[rollout.truncated].sum()) == 0
    assert int(rollout.completion_mask[~rollout.truncated].sum()) == int(
        rollout.completion_attention_mask[~rollout.truncated].sum())


def test_bad_rewards_stop_training_with_the_function_named(tiny_model_path, tmp_path):
    def nan_reward(prompts, completions, **_):
        return [float("nan")] * len(completions)

    def never_applies(prompts, completions, **_):
        return [None] * len(completions)

    for fn, match in ((nan_reward, "nan_reward"), (never_applies, "no reward function applied")):
        L.seed_everything(0)
        recipe = _recipe(tiny_model_path, rewards=[fn], accuracy_reward=None)
        with pytest.raises(RewardError, match=match):
            _trainer(tmp_path, max_steps=1, enable_checkpointing=False).fit(recipe, _data())


def test_cosine_schedule_needs_max_steps(tiny_model_path):
    from recipes.base import RecipeConfigError
    from recipes.grpo import GRPO

    recipe = GRPO(model_name_or_path=str(tiny_model_path), rewards=["accuracy"], optimizer={"lr_schedule": "cosine"})
    with pytest.raises(RecipeConfigError, match="lr_schedule=cosine .*set trainer.max_steps"):
        recipe.configure_optimizers()  # no trainer, no max_steps: the decay has no end (was silently constant)
