"""The venv's torchvision guard: torchvision and the libraries that import it must import."""
import subprocess
import sys


def test_torchvision_and_dependents_import():
    code = "import torchvision, transformers.models.clip.modeling_clip, diffusers, open_clip; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_guard_defines_schemas_only_when_ops_are_missing():
    import torch
    import torchvision.extension

    if torchvision.extension._has_ops():  # consistent install (e.g. a GPU machine): nothing to guard
        return
    import _sgalign_torchvision_guard as guard

    assert guard._libraries, "ops are missing yet the guard defined nothing"
    assert guard.define_missing_schemas() is False  # idempotent: already defined
    assert hasattr(torch.ops.torchvision, "nms")
