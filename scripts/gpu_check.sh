#!/usr/bin/env bash
# The one command to run on a GPU machine (issue 18 item 6). Budget: under 9 minutes on one H200.
#
#   bash scripts/gpu_check.sh [OUT]          # OUT: default runs/gpu_check/<date-time>
#
# 1. setup (scripts/setup.sh; on a machine without network, where it cannot install, the base python is used as is
#    when it already imports torch + diffusers + transformers + accelerate + torch_geometric);
# 2. the full-size bench in bf16 (scripts/bench_fullsize.py, RANDOM-INIT exact architectures): parameter counts,
#    every method on both tasks for SD1.5-SG at 512 px and SDXL-SG at 1024 px (full fine-tuning, Adafactor, gradient
#    checkpointing, Inversion-DPO N = 80 with the constant-memory gradient), s/step, pairs/s, CUDA peak memory, UNet
#    forwards per pair, TFLOP/s and MFU against the bf16 peak; plus Inversion-DPO peak memory at N = 10 and 40 on
#    SDXL-SG (N = 80 is the main row): flat in N;
# 3. a few hundred steps of the world job on the GPU: build_pairs on 32 world annotations, 300 Diffusion-DPO steps
#    from the world SD1.5-SG, a small evaluation against the base.
# Every stage has its own time limit (they sum to 490 s; + start-up), so the whole stays within budget; a stage past its limit leaves what it wrote
# (the bench writes results.json after every case). Everything lands in OUT; OUT/summary.txt lists it.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-runs/gpu_check/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DEFAULT_TIMEOUT=5 PIP_RETRIES=0  # no network: fail fast
T0=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }
stage() {  # stage NAME SECONDS CMD...: run with a time limit, output to OUT/NAME.log, status to the summary
  local name=$1 limit=$2; shift 2
  log "$name: start (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "$name: exit $rc$( [ $rc -eq 124 ] && echo ' (time limit reached; partial results kept)')"
  return 0
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
stage setup 45 bash scripts/setup.sh
PY=.venv/bin/python
CHECK='import torch, diffusers, transformers, accelerate, torch_geometric; assert torch.cuda.is_available(), "no CUDA"'
if ! "$PY" -c "$CHECK" 2>>"$OUT/setup.log"; then
  PY=python3
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  log "setup: .venv not usable here; using $(command -v python3) with PYTHONPATH=$ROOT"
  "$PY" -c "$CHECK" || { log "no usable python with CUDA torch + diffusers + transformers + accelerate; stop"; exit 1; }
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee -a "$OUT/summary.txt"

B="$PY scripts/bench_fullsize.py --device cuda --steps 2 --threads 8"
stage counts 25 $B --count-only
stage bench_sd15_sg 70 $B --archs sd15-sg --out "$OUT/bench_sd15_sg"
stage bench_sdxl_sg_compositional 170 $B --archs sdxl-sg --tasks compositional --inv-sweep 10,40 \
  --out "$OUT/bench_sdxl_sg_compositional"
stage bench_sdxl_sg_t2i 60 $B --archs sdxl-sg --tasks t2i --out "$OUT/bench_sdxl_sg_t2i"

W="$OUT/world"
stage world_build_pairs 40 "$PY" scripts/build_pairs.py --source laion-sg --n 32 --out "$W/pairs"
DATA="$W/pairs"
[ -f "$W/pairs/index.json" ] || { DATA=synthetic; log "world_build_pairs gave no dataset: training on data.path=synthetic"; }
stage world_train 50 "$PY" scripts/train.py --task compositional --method diffusion-dpo --set "data.path=$DATA" \
  --set "trainer.output_dir=$W/train" --set trainer.max_steps=300 --set checkpointing.every=0
stage world_evaluate 30 "$PY" scripts/evaluate.py --task compositional --model "$W/train/final" --out "$W/eval" \
  --set inputs.n=16

{
  echo; echo "== results (RANDOM-INIT full-size models; world job on the shipped world SD1.5-SG)"
  for f in "$OUT"/bench_*/results.json; do [ -f "$f" ] && echo "$f"; done
  grep -h "^|" "$OUT"/bench_*.log 2>/dev/null
  grep -h "done:" "$OUT/world_train.log" 2>/dev/null
  cat "$OUT/counts.log" 2>/dev/null
} >> "$OUT/summary.txt"
log "finished; figures in $OUT (summary.txt, bench_*/results.json, world/)"
