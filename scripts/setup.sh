#!/usr/bin/env bash
# One-command install of sgalign into .venv/ at the project root (created if missing).
#   bash scripts/setup.sh            # then .venv/bin/python runs everything
# Idempotent: re-running only installs what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"

# torch policy. A GPU machine ships its own CUDA torch in the base interpreter: the venv then sees it
# (--system-site-packages) and every install is constrained to exactly that version, so nothing replaces it.
# Otherwise (this CPU kind) torch must be exactly 2.13.0: pip takes the local CPU wheel for that spec only;
# any other spec, asked directly or by a dependency, pulls a multi-GB CUDA build from the registry.
SYSTEM_TORCH="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "$SYSTEM_TORCH" ]; then
    echo "[setup] base interpreter has torch $SYSTEM_TORCH: venv will reuse it (--system-site-packages)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
CONSTRAINTS="$VENV/sgalign-constraints.txt"
TORCH_IN_VENV="$("$VPY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [ -z "$TORCH_IN_VENV" ]; then
  "$VPY" -m pip install --quiet "torch==2.13.0"
  TORCH_IN_VENV="$("$VPY" -W ignore -c 'import torch; print(torch.__version__)' 2>/dev/null)"
fi
echo "torch==${TORCH_IN_VENV%%+*}" > "$CONSTRAINTS"
echo "[setup] torch ${TORCH_IN_VENV} (pinned for all further installs)"

"$VPY" -m pip install --quiet -c "$CONSTRAINTS" -e "$ROOT"

# torchvision guard. open_clip_torch requires torchvision; the only torchvision matching torch 2.13.0 on the
# registry (0.28.0) is a CUDA build whose compiled ops cannot load with the CPU torch. Its
# _meta_registrations.py then registers fake kernels for torchvision::nms / qnms, which were never defined,
# and the import dies ("operator torchvision::nms does not exist") -- taking transformers' models, diffusers,
# open_clip and timm with it (transformers imports torchvision when it is installed). We install a .pth hook
# that, only when torchvision's compiled ops are unavailable, defines those two schemas just before
# torchvision._meta_registrations runs. torchvision then imports; its C++ ops (nms, roi_align...) stay
# unavailable, which sgalign never uses (PIL does image I/O). On a machine whose torchvision loads its ops
# (any GPU machine) the hook does nothing.
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$ROOT/sgalign/_torchvision_guard.py" "$SITE/_sgalign_torchvision_guard.py"
echo "import _sgalign_torchvision_guard; _sgalign_torchvision_guard.install()" > "$SITE/_sgalign_torchvision_guard.pth"

"$VPY" -c "import torch, torchvision, transformers, diffusers, open_clip, torch_geometric; print('[setup] ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| transformers', transformers.__version__, '| diffusers', diffusers.__version__)"
