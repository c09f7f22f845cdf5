"""Does FSDP run on CPU processes with this torch? (a check, not a test; docs/BENCHMARKS.md "Distributed on CPU")

Run under torch's launcher with 2 gloo processes::

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 \\
        --master_port 29517 scripts/check_fsdp_cpu.py

Each rank wraps a tiny random-init diffusers UNet (sgalign.pipelines.tiny) with FSDP2 (``fully_shard`` on every
BasicTransformerBlock / ResnetBlock2D, the wrap classes of configs/accelerate/fsdp.yaml, then the root) and with
FSDP1 (``FullyShardedDataParallel``, device_id cpu), runs one forward/backward/AdamW step on rank-seeded data and
prints the shard sizes, the loss and whether both ranks hold the same full weights afterwards. This is raw torch, not
the trainer: accelerate 1.15 does not run FSDP on CPU (see the document)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def _step(model, rank: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)  # different data per rank: the step must all-reduce to agree
    x, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    loss = model(x, torch.tensor([10, 500]), encoder_hidden_states=c).sample.pow(2).mean()
    loss.backward()
    opt.step()
    return loss.item()


def _same_on_all_ranks(full: torch.Tensor) -> bool:
    other = full.clone()
    dist.broadcast(other, 0)
    return bool(torch.equal(other, full))


def main() -> None:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    from sgalign.pipelines.tiny import tiny_unet
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    unet = tiny_unet(False, 32, seed=0)
    for m in unet.modules():
        if isinstance(m, (BasicTransformerBlock, ResnetBlock2D)):
            fully_shard(m)
    fully_shard(unet)
    loss = _step(unet, rank)
    p = unet.conv_in.weight
    print(f"rank {rank}: FSDP2 fully_shard: {type(p).__name__} local {tuple(p.to_local().shape)} of {tuple(p.shape)}, "
          f"loss {loss:.5f}, weights equal across ranks after the step: {_same_on_all_ranks(p.full_tensor())}",
          flush=True)
    unet1 = FullyShardedDataParallel(tiny_unet(False, 32, seed=0), device_id=torch.device("cpu"), use_orig_params=True)
    loss = _step(unet1, rank)
    with FullyShardedDataParallel.summon_full_params(unet1):
        w = unet1.module.conv_in.weight.detach().clone()
    print(f"rank {rank}: FSDP1 FullyShardedDataParallel(device_id=cpu): loss {loss:.5f}, weights equal across ranks "
          f"after the step: {_same_on_all_ranks(w)}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
