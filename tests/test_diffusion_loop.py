"""The shared pre-training loop (sgalign.diffusion.loop): exact resume, EMA, clipping, time limit, accumulation
through accelerate, and the min-SNR weights."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sgalign.diffusion.loop import Loop, min_snr_weights, warmup_cosine

TOTAL = 6


class Interrupt(Exception):
    pass


def make(folder=None, save_every=0, ema_decay=0.9, **kw):
    torch.manual_seed(0)
    mods = {"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(2, 1)}
    opt = torch.optim.AdamW([p for m in mods.values() for p in m.parameters()], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(2, TOTAL))
    return Loop(mods, opt, sched, ema_decay=ema_decay, checkpoint_dir=folder, save_every=save_every, **kw)


def loss_fn(loop, stop_at=None):
    def f(step):
        if step == stop_at:
            raise Interrupt
        g = torch.Generator().manual_seed(100 + step)  # every draw from the step index
        x, y = torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)
        loss = ((loop.modules["b"](torch.tanh(loop.modules["a"](x))) - y) ** 2).mean()
        return loss, {"loss": float(loss.detach())}
    return f


def state(loop):
    return {"weights": {k: m.state_dict() for k, m in loop.modules.items()},
            "ema": {k: e.state_dict() for k, e in loop.ema.items()}, "opt": loop.optimizer.state_dict(),
            "sched": loop.scheduler.state_dict(), "step": loop.step,
            "losses": [h["loss"] for h in loop.history]}


def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_is_exact(tmp_path):
    straight = make()
    straight.run(TOTAL, loss_fn(straight))
    # k steps, checkpoint, resume in a fresh loop to N
    first = make(tmp_path / "k")
    first.run(3, loss_fn(first))
    again = make(tmp_path / "k")
    assert again.resume() and again.step == 3
    again.run(TOTAL, loss_fn(again))
    assert same(state(again), state(straight))
    # killed at step 5 with checkpoints every 2 steps: resumes from step 4 and ends the same
    killed = make(tmp_path / "kill", save_every=2)
    with pytest.raises(Interrupt):
        killed.run(TOTAL, loss_fn(killed, stop_at=4))
    assert json.loads((tmp_path / "kill" / "state.json").read_text())["step"] == 4
    resumed = make(tmp_path / "kill", save_every=2)
    assert resumed.resume() and resumed.step == 4
    resumed.run(TOTAL, loss_fn(resumed))
    assert same(state(resumed), state(straight))
    names = sorted(p.name for p in (tmp_path / "kill").iterdir())
    assert names == ["a.ema.pt", "a.safetensors", "b.ema.pt", "b.safetensors", "optimizer.pt", "state.json"]
    assert not make(tmp_path / "none").resume()


def test_ema_weights_follow_diffusers_decay_and_are_restored():
    loop = make(ema_decay=0.5)
    raw = []
    loop.run(TOTAL, loss_fn(loop), on_step=lambda n, s: raw.append(
        [p.detach().clone() for m in loop.modules.values() for p in m.parameters()]))
    ema = [p.detach().clone() for p in raw[0]]  # diffusers EMAModel: decay 0 at step 1, then min(decay, (1+k)/(10+k))
    for k, params in enumerate(raw[1:], start=1):
        d = min(0.5, (1 + k) / (10 + k))
        ema = [e - (1 - d) * (e - p) for e, p in zip(ema, params)]
    params = lambda: [p.detach().clone() for m in loop.modules.values() for p in m.parameters()]  # noqa: E731
    with loop.ema_weights():
        assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(params(), ema))
    assert same(params(), raw[-1])
    plain = make(ema_decay=None)
    plain.run(2, loss_fn(plain))
    before = params()
    with plain.ema_weights():  # no EMA: the trained weights
        pass
    assert not plain.ema and same(params(), before)


def test_clipping_and_time_limit(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    w0 = [p.detach().clone() for p in lin.parameters()]
    loop = Loop({"lin": lin}, opt, max_grad_norm=0.5, max_seconds=0.0, checkpoint_dir=tmp_path / "c")
    loop.run(10, lambda _: (((lin(torch.ones(2, 4)) - 100.0) ** 2).mean(), {"loss": 0.0}))
    step = torch.cat([(a - p.detach()).flatten() for a, p in zip(w0, lin.parameters())])
    assert torch.allclose(step.norm(), torch.tensor(0.5))  # the update of SGD(lr=1) is the clipped gradient
    assert loop.step == 1 and loop.timed_out  # the time limit is checked after each step
    assert json.loads((tmp_path / "c" / "state.json").read_text())["step"] == 1


def test_gradient_accumulation_through_accelerate_matches_the_mean_loss():
    from accelerate import Accelerator

    def run(acc, micro):
        torch.manual_seed(0)
        lin = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)  # not prepared: the loop steps it on sync steps only
        xs = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1))  # 4 steps of 2 rows
        it = iter(xs.reshape(-1, 1, 3) if micro else xs)  # micro: 2 micro-batches of 1 row per step
        loop = Loop({"lin": lin}, opt, max_grad_norm=None, accelerator=acc)
        hist = loop.run(4, lambda _: (lin(next(it)).pow(2).mean(), {"loss": 1.0}))
        return [p.detach() for p in lin.parameters()], loop.step, hist

    acc = Accelerator(gradient_accumulation_steps=2, cpu=not torch.cuda.is_available())  # as pretrain_sg does
    (w_acc, steps, hist), (w_plain, _, _) = run(acc, True), run(None, False)
    assert steps == 4 and len(hist) == 4  # one optimiser step per 2 micro-batches
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w_acc, w_plain))


def test_min_snr_weights():
    ac = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.001])
    sched = SimpleNamespace(alphas_cumprod=ac)
    t = torch.tensor([0, 1, 2, 3, 4])
    snr = ac / (1 - ac)
    capped = torch.minimum(snr, torch.tensor(5.0))
    assert torch.equal(min_snr_weights(sched, t, 5.0), capped / snr)
    assert torch.equal(min_snr_weights(sched, t, 5.0, "v_prediction"), capped / (snr + 1))
    assert min_snr_weights(sched, t, 5.0)[-1] == 1.0 and min_snr_weights(sched, t, 5.0)[0] < 0.01
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weights(sched, t, 5.0, "sample")
    # a floor: v's weight at alpha_bar = 0 (t = T of a zero-terminal-SNR schedule) is 0 without it, the floor with it
    zero = SimpleNamespace(alphas_cumprod=torch.tensor([0.5, 0.0]))
    assert min_snr_weights(zero, torch.tensor([0, 1]), 5.0, "v_prediction").tolist() == [0.5, 0.0]
    floor01 = min_snr_weights(zero, torch.tensor([0, 1]), 5.0, "v_prediction", floor=0.1)
    assert floor01.tolist() == pytest.approx([0.5, 0.1])
    floored = min_snr_weights(sched, t, 5.0, "v_prediction", floor=0.3)
    assert torch.equal(floored, torch.clamp(capped / (snr + 1), min=0.3))
