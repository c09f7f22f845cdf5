"""model_fingerprint hashes a frozen module once and re-hashes only when its state may have changed; trainable
modules are re-hashed on every call (and a changed one gets a new fingerprint)."""
import copy

import pytest
import torch
from torch import nn

import sgalign.diffusion.cache as cache_mod
from sgalign.diffusion import model_fingerprint


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(8))

    def forward(self, x):
        return x - self.running_mean


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), Scale(), nn.Linear(8, 2))


@pytest.fixture
def hashed(monkeypatch):
    """Counts the tensors whose bytes get hashed."""
    calls = []
    real = cache_mod._bytes

    def counting(t):
        calls.append(1)
        return real(t)

    monkeypatch.setattr(cache_mod, "_bytes", counting)
    return calls


def test_frozen_module_is_hashed_once_and_rehashed_after_a_change(hashed):
    m = net().requires_grad_(False)
    n_state = len(m.state_dict())
    fp = model_fingerprint(m)
    assert len(hashed) == n_state
    assert model_fingerprint(m) == fp and len(hashed) == n_state  # second call: no tensor re-read
    assert fp == model_fingerprint(copy.deepcopy(m))  # the cached digest is the digest of the values

    hashed.clear()
    with torch.no_grad():
        m[0].weight.add_(1.0)  # in-place write bumps the version counter
    fp2 = model_fingerprint(m)
    assert fp2 != fp and len(hashed) == n_state
    m[1].running_mean.add_(0.5)  # buffers count too
    fp3 = model_fingerprint(m)
    assert fp3 not in (fp, fp2)
    m[2].weight = nn.Parameter(torch.zeros_like(m[2].weight), requires_grad=False)  # a replaced tensor
    fp4 = model_fingerprint(m)
    assert fp4 not in (fp, fp2, fp3)
    m.load_state_dict(net().state_dict())  # copy_ into the same tensors: back to the original values
    assert model_fingerprint(m) == fp
    m.double()  # new tensors (and dtype)
    assert model_fingerprint(m) != fp


def test_writes_through_data_need_cache_clear(hashed):
    m = net().requires_grad_(False)
    fp = model_fingerprint(m)
    m[0].weight.data.mul_(2.0)  # .data bypasses the version counter: documented, cache_clear re-hashes
    model_fingerprint.cache_clear(m)
    assert model_fingerprint(m) != fp


def test_trainable_module_is_rehashed_every_call_and_changes_after_a_step(hashed):
    m = net()
    n_state = len(m.state_dict())
    fp = model_fingerprint(m)
    assert model_fingerprint(m) == fp and len(hashed) == 2 * n_state  # never cached
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    assert model_fingerprint(m) != fp
    m.requires_grad_(False)  # frozen now: cached from here on
    fp2 = model_fingerprint(m)
    model_fingerprint(m)
    assert len(hashed) == 4 * n_state and fp2 != fp


def test_zero_dim_buffers_are_hashed():
    m = nn.BatchNorm1d(3).requires_grad_(False)  # num_batches_tracked: a 0-d int64 buffer
    fp = model_fingerprint(m)
    m.num_batches_tracked += 1
    assert model_fingerprint(m) != fp
