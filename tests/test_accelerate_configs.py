"""configs/accelerate/*.yaml are read by accelerate itself: the launcher's own parsing and validation
(``accelerate launch --config_file``), the environment it hands the processes, and the plugin objects those
processes build from it (DeepSpeedPlugin needs no deepspeed install; FullyShardedDataParallelPlugin with its wrap
classes resolved on our UNet). Nothing here launches DeepSpeed or FSDP: accelerate 1.15 runs neither on a CPU-only
machine (docs/BENCHMARKS.md, "Distributed on CPU", says exactly what ran)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACC = ROOT / "configs" / "accelerate"


def launch_env(name: str):
    """What ``accelerate launch --config_file configs/accelerate/<name>.yaml scripts/train.py`` would run with:
    (validated args, environment of the worker processes)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
    args = launch_command_parser().parse_args(["--config_file", str(ACC / f"{name}.yaml"),
                                               str(ROOT / "scripts" / "train.py")])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before the DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name, stage, save16", [("zero2", 2, False), ("zero3", 3, True)])
def test_deepspeed_configs(name, stage, save16, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin
    args, env = launch_env(name)
    assert args.use_deepspeed and not args.use_fsdp and args.num_processes == 8
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == stage and zero["stage"] == stage
    assert zero["offload_optimizer"]["device"] == "none" and zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is save16
    # filled in from the training config (trainer.gradient_accumulation_steps, optimizer.max_grad_norm)
    assert plugin.gradient_accumulation_steps == "auto" and plugin.gradient_clipping == "auto"
    assert plugin.zero3_init_flag is False  # the frozen reference and VAE must stay whole


def test_fsdp_config(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import ShardingStrategy

    from sgalign.pipelines.tiny import tiny_unet
    from sgalign.training.modeling import Denoiser
    args, env = launch_env("fsdp")
    assert args.use_fsdp and not args.use_deepspeed and args.num_processes == 8
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # sync_module_states (forced on by the launcher's default cpu_ram_efficient_loading) asks the plugin for the
    # current GPU at construction; there is none here
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1 and plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.use_orig_params and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.transformer_cls_names_to_wrap == ["BasicTransformerBlock", "ResnetBlock2D"]
    model = Denoiser(tiny_unet(False, 32))
    plugin.set_auto_wrap_policy(model)  # resolves every wrap class name in our model
    assert plugin.auto_wrap_policy is not None
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "NoSuchBlock")
    with pytest.raises(ValueError, match="NoSuchBlock"):  # what a wrong name would do at start-up
        FullyShardedDataParallelPlugin().set_auto_wrap_policy(model)


@pytest.mark.parametrize("name, procs", [("ddp", 8), ("cpu2", 2)])
def test_data_parallel_configs(name, procs):
    args, env = launch_env(name)
    assert args.multi_gpu and not args.use_deepspeed and not args.use_fsdp and args.num_processes == procs
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # the training config's trainer.mixed_precision decides
