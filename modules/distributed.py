"""Making the policy usable under sharded strategies (FSDP2, torch `fully_shard`).

The RL loop calls the policy's Hugging Face model directly: `generate` for rollouts, a forward for log-probs, both
inside `training_step` and from callbacks (`evaluate`). With FSDP2 every decoder layer and the causal LM are
`fully_shard`-ed modules whose forward all-gathers their weights, so those calls work unchanged, with two exceptions
handled here:

- `generate`: a sharded forward all-gathers each layer, so a token-by-token `generate` would all-gather the model
  once per token. `gathered_for_generation` all-gathers it once, generates, and reshards (what TRL/veRL do).
  Ranks stopping at different lengths are safe either way: transformers' `generate` turns on `synced_gpus` for
  FSDP modules (a finished rank keeps stepping until every rank is done).
- saving: `full_state_dict` gathers the weights (a collective: every rank calls it, rank 0 gets them).

`FSDP2Strategy` is Lightning's `ModelParallelStrategy` as pure data parallelism (every rank is a data-parallel rank,
no tensor parallelism); `configure_sharding(recipe)` (called by `RLRecipe.configure_model`) shards the policy.
Lightning's own `FSDPStrategy` (FSDP1, `trainer.strategy: fsdp`) is refused: it wraps the LightningModule, so the
direct calls above would see sharded root weights, and it needs CUDA.
"""

from __future__ import annotations

from datetime import timedelta

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from modules.policy import Policy, PolicyConfigError
from modules.sharded import full_state_dict, gathered_for_generation, is_main_process, is_sharded

try:  # torch >= 2.6 exports FSDP2 here
    from torch.distributed.fsdp import fully_shard
except ImportError:  # pragma: no cover - older torch
    from torch.distributed._composable.fsdp import fully_shard  # type: ignore[no-redef]

_DEFAULT_TIMEOUT = timedelta(minutes=30)


class ShardingError(PolicyConfigError):
    """A recipe or setting that cannot run sharded; the message names the fix."""


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism (FSDP2) for the RL recipes: weights, gradients and optimiser states are split
    over all ranks; each rank samples and trains on its own prompts, as with DDP.

    Use it with `--config recipes/configs/strategies/fsdp.yaml`. Runs on CUDA (NCCL) and on CPU (gloo).
    """

    def __init__(self, reshard_after_forward: bool = True, save_distributed_checkpoint: bool = False,
                 process_group_backend: str | None = None, timeout: timedelta | None = _DEFAULT_TIMEOUT) -> None:
        """
        Args:
            reshard_after_forward: Free each decoder layer's gathered weights after its forward (less memory; the
                backward gathers them again). False keeps them until the backward (ZeRO-2-like, faster).
            save_distributed_checkpoint: True: each rank writes its shard (a checkpoint folder); False: rank 0
                writes one file with the full trainable weights and optimiser state (what `--ckpt_path` resumes).
            process_group_backend: nccl (CUDA) or gloo (CPU); null picks by device.
            timeout: Collective timeout.
        """
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" is one data-parallel rank per node; here every process is one.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def shard_policy(policy: Policy, mesh, *, reshard_after_forward: bool = True) -> nn.Module:
    """`fully_shard` each decoder layer (the model's `_no_split_modules` classes), then the causal LM as the root.

    For LoRA the root is the base causal LM inside the PEFT wrappers (both `PeftModel.forward` and `generate` call
    it). Frozen and trainable weights share a shard; only trainable ones get gradients. Returns the root.
    """
    root = policy.model.get_base_model() if policy.is_peft else policy.model
    if is_sharded(root):
        return root
    if getattr(root, "is_quantized", False) or getattr(root, "hf_quantizer", None) is not None:
        raise ShardingError("model.quantization cannot be sharded with FSDP (bitsandbytes weights are not DTensors); "
                            "use trainer.strategy=ddp (QLoRA's frozen 4-bit base fits one GPU)")
    names = set(getattr(root, "_no_split_modules", None) or [])
    layers = [m for m in root.modules() if type(m).__name__ in names and m is not root]
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
        layer._r1_reshard_after_forward = reshard_after_forward
    # The root's weights (embeddings, norm, LM head) are used first in the backward: FSDP2 keeps them after forward.
    fully_shard(root, mesh=mesh, reshard_after_forward=False)
    root._r1_reshard_after_forward = False
    return root


def configure_sharding(recipe) -> None:
    """Shard `recipe.policy` when the strategy gives a device mesh (FSDP2Strategy); refuse what cannot run sharded.

    Called from `RLRecipe.configure_model`; a no-op under DDP and single-device training.
    """
    if recipe._trainer is None:
        return
    strategy = recipe.trainer.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ShardingError("trainer.strategy=fsdp (Lightning's FSDPStrategy, FSDP1) cannot run the RL loop: the "
                            "recipes call the policy outside the wrapped module. Use FSDP2: "
                            "--config recipes/configs/strategies/fsdp.yaml (modules.distributed.FSDP2Strategy)")
    # by name: lightning's DeepSpeedStrategy cannot be built without deepspeed installed
    deepspeed = any(cls.__name__ == "DeepSpeedStrategy" for cls in type(strategy).__mro__)
    clip = recipe.optimizer_settings.max_grad_norm
    if deepspeed and clip is not None:
        raise ShardingError(f"model.optimizer.max_grad_norm={clip} clips p.grad, which DeepSpeed ZeRO partitions away "
                            "(it would silently clip nothing): set model.optimizer.max_grad_norm null and clip "
                            "with DeepSpeed's own `gradient_clipping` in trainer.strategy.init_args.config")
    mesh = recipe.device_mesh
    if mesh is None:
        return
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        raise ShardingError("tensor parallelism is not supported by the recipes; use "
                            "trainer.strategy=modules.distributed.FSDP2Strategy (data parallel only)")
    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    shard_policy(recipe.policy, dp_mesh, reshard_after_forward=getattr(strategy, "reshard_after_forward", True))
    from torch.distributed.tensor import DTensor

    outside = [name for name, p in recipe.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if outside:
        raise ShardingError(f"{type(recipe).__name__} trains parameters outside the policy's model "
                            f"({', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''}), which FSDP does not "
                            "shard; use trainer.strategy=ddp (--config recipes/configs/strategies/ddp.yaml)")


__all__ = ["FSDP2Strategy", "ShardingError", "configure_sharding", "full_state_dict", "gathered_for_generation",
           "is_main_process", "is_sharded", "shard_policy"]
