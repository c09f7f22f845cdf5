"""Trainer-level checks of two fixes:

* faithful Inversion-DPO run exactly as the world job launches it (configs/world/compositional.yaml, whose AdamW
  keeps the trainer's 1e-2 weight decay): the method's optimizer setting (weight_decay 0, the official run's
  effective value, merged into the resolved config) keeps every weight bit-identical, since the official objective
  has exactly zero gradient at θ = θ_ref; an explicitly configured weight decay is kept (and noted);
* guidance's unconditional branch passed to the UNet: SD1.5 the empty-text conditioning
  (``models.conditioning.unconditional_conditioning``), SDXL zeros; faithful Inversion-DPO zeros for both.
"""
import math

import pytest
import torch

from sgalign.models.conditioning import SGConditioning, unconditional_conditioning
from sgalign.jobs.train_cli import parse
from sgalign.training.trainer import Trainer
from sgalign.jobs.specs import resolve_budget, train_config, train_overrides
from training_helpers import make_config, tiny_assets  # noqa: F401


def world_config(assets, out, method_id, extra=()):
    """The world job's own config for ``method_id`` (micro budget, 3 steps), on the tiny SD1.5-SG assets."""
    b = resolve_budget("micro", train_steps=3, batch_size=2)
    return train_config(method_id, out, assets["sd15-sg"], assets["candidates"], b, seed=0,
                        overrides=("checkpointing.final_pipeline=false", "checkpointing.every=0",
                                   "logging.tensorboard='off'", *extra))


@pytest.mark.parametrize("method_id", ["inversion-dpo-faithful", "smpo", "sft"])
@pytest.mark.parametrize("task", ["compositional", "t2i"])
@pytest.mark.parametrize("budget", ["micro", "demo"])
def test_world_job_command_line_is_its_config(tmp_path, method_id, task, budget):
    """job_command.txt (the train.py arguments the job writes for provenance) parses to the config it trains
    (demo: each method's tuned lr and steps from the task YAML's method.settings)."""
    b = resolve_budget(budget)
    args = (method_id, tmp_path / "run", tmp_path / "base", tmp_path / "pairs", b, 0, task)
    assert parse(train_overrides(*args))[1] == train_config(*args)
    resumed = parse([*train_overrides(*args), "--resume", "latest"])[1]
    assert resumed == train_config(*args, resume="latest")


def weights(tr):
    return {k: v.clone() for k, v in tr.acc.unwrap_model(tr.policy).state_dict().items()}


def test_world_faithful_inversion_dpo_keeps_weights_bit_identical(tiny_assets, tmp_path):  # noqa: F811
    cfg = world_config(tiny_assets, tmp_path / "run", "inversion-dpo-faithful")
    # the world config keeps AdamW's 1e-2; the method's 0 is merged when the config is resolved
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.weight_decay == 0.0
    assert world_config(tiny_assets, tmp_path / "c", "inversion-dpo").optimizer.weight_decay == 1e-2
    tr = Trainer(cfg)
    assert tr.lr == pytest.approx(2e-5)  # 1e-5 per pair x 2: a 1e-2 decay would shrink every weight by 2e-7
    start = weights(tr)
    result = tr.train()
    end = weights(tr)
    assert all(torch.equal(start[k], end[k]) for k in start)
    assert tr.cfg.optimizer.weight_decay == 0.0 and tr.optimizer.param_groups[0]["weight_decay"] == 0.0
    assert result.summary["final_loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert result.summary["weight_drift"] == 0.0  # the diagnostic reads "nothing moved"
    assert result.summary["method_provenance"]["faithful"] is True
    assert any("optimizer.weight_decay=0.0" in n for n in result.summary["notes"])
    assert "weight_decay: 0.0" in (tmp_path / "run" / "resolved_config.yaml").read_text()


def test_corrected_run_keeps_weight_decay_and_explicit_value_wins(tiny_assets, tmp_path):  # noqa: F811
    tr = Trainer(world_config(tiny_assets, tmp_path / "a", "inversion-dpo"))
    assert tr.optimizer.param_groups[0]["weight_decay"] == 1e-2
    assert not any("weight_decay" in n for n in tr.notes)
    tr = Trainer(world_config(tiny_assets, tmp_path / "b", "inversion-dpo-faithful", ["optimizer.weight_decay=0.01"]))
    assert tr.optimizer.param_groups[0]["weight_decay"] == 0.01
    assert any("keeping the configured optimizer.weight_decay=0.01" in n for n in tr.notes)


def captured_hidden_states(tr):
    """encoder_hidden_states (and added cond) of the reference UNet's first guided inversion call on a real batch:
    rows [uncond (2B: winners, losers); cond (2B)]."""
    seen = []
    h = tr.reference.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        batch = tr.make_batch(tr.stream.next(), torch.Generator().manual_seed(0))
        with torch.no_grad():
            tr.method.provide(batch, tr.context(torch.Generator().manual_seed(0)))
    finally:
        h.remove()
    kw, n = seen[0], 2 * batch.size
    return kw["encoder_hidden_states"][:n], kw["encoder_hidden_states"][n:], kw.get("added_cond_kwargs"), n


@pytest.mark.parametrize("task", ["compositional", "t2i"])
def test_sd15_unconditional_branch_is_the_empty_text(tiny_assets, tmp_path, task):  # noqa: F811
    tr = Trainer(make_config(tiny_assets, tmp_path, task, "inversion-dpo", ["trainer.max_steps=1"]))
    u, c, added, n = captured_hidden_states(tr)
    ref = unconditional_conditioning(SGConditioning(torch.zeros(n, *u.shape[1:])), tr.encoder.tokenizers,
                                     tr.encoder.text_encoders, pad_with_eos_copies=tr.reference.pad_with_eos_copies)
    assert added is None and u.abs().sum() > 0
    torch.testing.assert_close(u, ref.prompt_embeds.float(), rtol=0, atol=1e-6)
    assert not torch.allclose(u, c)
    assert tr.unconditional.spec == "empty-text"
    # faithful: the official code's zero embeddings (its SDXL convention; it has no SD1.5 path)
    out = tr.method.__class__(faithful=True, num_steps=2)(tr.make_batch(tr.stream.next(), torch.Generator()),
                                                         tr.context(torch.Generator().manual_seed(0)))
    assert out.provenance["uncond_branch"] == "zeros"
    out = tr.method(tr.make_batch(tr.stream.next(), torch.Generator()), tr.context(torch.Generator().manual_seed(0)))
    assert (out.provenance["uncond"], out.provenance["uncond_branch"]) == ("model", "empty-text")


def test_sdxl_unconditional_branch_is_zeros(tmp_path):
    from sgalign.pipelines.tiny import make_tiny
    from sgalign.training.synthetic import write_pickapic

    assets = {"sd15": make_tiny("sdxl", tmp_path / "sdxl"),
              "pickapic": write_pickapic(tmp_path / "pap.parquet", rows=2, scores=True, seed=2)}
    tr = Trainer(make_config(assets, tmp_path / "run", "t2i", "inversion-dpo", ["trainer.max_steps=1"]))
    u, c, added, n = captured_hidden_states(tr)
    assert torch.count_nonzero(u) == 0 and torch.count_nonzero(c) > 0
    assert torch.count_nonzero(added["text_embeds"][:n]) == 0 and torch.count_nonzero(added["text_embeds"][n:]) > 0
    assert torch.equal(added["time_ids"][:n], added["time_ids"][n:])  # SDXL's time ids are kept
    assert tr.unconditional.spec == "zeros"


def test_weight_drift_is_relative_distance_over_trainable_tensors():
    from sgalign.training.modeling import frozen_copy, weight_drift
    policy = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        policy[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
        policy[1].weight.copy_(torch.tensor([[4.0, 0.0]]))
    ref = frozen_copy(policy)
    assert weight_drift(policy, ref) == 0.0
    with torch.no_grad():
        policy[0].weight[1, 1] = 5.0  # |Δ| = 5 over |θ_ref| = 5
    assert weight_drift(policy, ref) == pytest.approx(1.0)
    policy[1].weight.requires_grad_(False)  # frozen tensors are not counted: |Δ| = 5 over |θ_ref[0]| = 3
    assert weight_drift(policy, ref) == pytest.approx(5 / 3)
    assert math.isnan(weight_drift(policy, policy))  # LoRA: the reference is the policy itself


def test_demo_budget_trains_each_method_with_its_tuned_settings(tmp_path):
    """The demo budget leaves lr and steps to the task YAML: SFT's validated lr (5e-6) and t2i SmPO's early stop (50
    steps) reach the job's config; an explicit budget (micro) overrides every method alike."""
    import yaml

    from sgalign.jobs.specs import TASK_CONFIGS

    args = (tmp_path / "run", tmp_path / "base", tmp_path / "pairs")
    for task, method, key in [("compositional", "sft", ("optimizer", "lr")), ("t2i", "smpo", ("trainer", "max_steps"))]:
        tuned = yaml.safe_load(TASK_CONFIGS[task][0].read_text())["method"]["settings"][method][key[0]][key[1]]
        cfg = train_config(method, *args, resolve_budget("demo"), 0, task)
        assert getattr(getattr(cfg, key[0]), key[1]) == tuned
        micro = train_config(method, *args, resolve_budget("micro"), 0, task)
        assert (micro.optimizer.lr, micro.trainer.max_steps) == (1e-5, 2)
    assert train_config("sft", *args, resolve_budget("demo"), 0).optimizer.lr == 5e-6
    assert train_config("diffusion-dpo", *args, resolve_budget("demo"), 0).optimizer.lr == 1e-5


def test_budget_lr_from_the_command_line_is_a_number():
    """``--budget-set lr=1e-5`` arrives as the string '1e-5' (YAML 1.1); the budget holds the float, so a resumed
    job or tuning folder compares equal to the one that started it."""
    assert resolve_budget("demo", lr="1e-5") == resolve_budget("demo", lr=1e-5)
    with pytest.raises(ValueError, match="budget lr 'fast'"):
        resolve_budget("demo", lr="fast")


def test_sg_encoder_lr_is_its_own_group_and_moves_the_gate_at_its_rate(tiny_assets, tmp_path):  # noqa: F811
    """optimizer.sg_encoder_lr: the SG encoder's parameters (gate included) in a second group at their own lr (x the
    effective batch under scale_lr, as lr); unset, one group. After one step at a 100x larger SG lr the gate moves
    about 100x as far as it does at the UNet's lr (Adam's first step moves each weight by ~lr)."""
    moved = {}
    for name, extra in (("same", []), ("own", ["optimizer.sg_encoder_lr=3e-2"])):
        cfg = make_config(tiny_assets, tmp_path / name, overrides=["model.train_sg_encoder=true",
                                                                   "trainer.max_steps=1", *extra])
        tr = Trainer(cfg)
        groups = tr.optimizer.param_groups
        if name == "same":
            assert len(groups) == 1
        else:
            assert [g["lr"] for g in groups] == [3e-4, 3e-2]
            sg_ids = {id(p) for p in tr.policy.sg_encoder.parameters()}
            assert {id(p) for p in groups[1]["params"]} == sg_ids
            assert not sg_ids & {id(p) for p in groups[0]["params"]}
        before = tr.policy.sg_encoder.alpha_obj.item()
        tr.train()
        moved[name] = abs(tr.policy.sg_encoder.alpha_obj.item() - before)
    assert moved["same"] > 0 and 30 < moved["own"] / moved["same"] < 300


@pytest.mark.parametrize("method", ["diffusion-dpo", "inpo"])
def test_a_v_prediction_base_trains_in_its_own_space(tiny_assets, tmp_path, method):  # noqa: F811
    """A v-prediction base (SD2.x, the world recipe's --zero-snr-v) trains with every method: its squared errors in v,
    its inversions on ε (tests/test_methods_vpred.py for the values); the run's provenance says which. A scheduler
    predicting anything else is refused before any step, naming the model."""
    import json
    import shutil

    from sgalign.errors import UserError
    from sgalign.training.trainer import Trainer

    def model_predicting(kind):
        model = tmp_path / f"{kind}-model"
        shutil.copytree(tiny_assets["sd15-sg"], model)
        cfg_file = model / "scheduler" / "scheduler_config.json"
        sched = json.loads(cfg_file.read_text())
        cfg_file.write_text(json.dumps({**sched, "prediction_type": kind, "rescale_betas_zero_snr": True}))
        return {**tiny_assets, "sd15-sg": model}

    tr = Trainer(make_config(model_predicting("v_prediction"), tmp_path / "out", method=method,
                             overrides=["trainer.max_steps=2"]))
    assert tr.alphas_cumprod[-1] == 0  # zero-terminal SNR, as the world's v bases
    s = tr.train().summary
    assert s["steps"] == 2 and math.isfinite(s["final_loss"])
    assert s["method_provenance"]["prediction_type"] == "v_prediction"
    assert s["method_provenance"]["loss_space"] == "v_prediction"
    with pytest.raises(UserError, match="predicts 'sample'; the preference trainer supports epsilon and v_prediction"):
        Trainer(make_config(model_predicting("sample"), tmp_path / "out2"))
