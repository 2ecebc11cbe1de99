#!/usr/bin/env bash
# GPU check, ready to run on a CUDA machine (issue 15 item 7); sized for about 4-6 minutes (under 8) on an
# 8-GPU VM with 16+ cores: not yet timed on one (there was no GPU where it was written).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: gpu-check-<UTC time>
#   bash benchmarks/gpu_check.sh --dry-run [OUT_DIR] # no GPU needed: checks every step's command line
#
# Steps, each command written to OUT_DIR/commands.txt before it runs:
#   1. nvidia-smi (+ -q, topo) and the software versions  -> nvidia-smi*.txt, env.txt
#   2. delibench calibrate --workload resnet50             -> calibrate.json, profiles.yaml
#   3. a local testbed (SeaweedFS, same-region link), a synthetic ImageNet-like dataset, pushed to it
#   4. delibench run --compute cuda, bucket and deli on one GPU          -> run-1gpu.json
#   5. delibench run --compute cuda --nproc <GPUs>: DDP over NCCL, deli  -> run-<N>gpu.json
#   6. a summary of the figures                                          -> summary.txt
# The records (and their .steps.csv timelines) are in OUT_DIR/results. The testbed is stopped on exit.
#
# Fails at once, with one line and exit code 2, when no CUDA device is visible.
# Environment: PYTHON (default: python), SAMPLES (default 8192), BATCH (128), EPOCHS (2), GPUS (all visible).
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
PYTHON="${PYTHON:-python}"
OUT="${1:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
SAMPLES="${SAMPLES:-8192}"
BATCH="${BATCH:-128}"
EPOCHS="${EPOCHS:-2}"
DELI="deli:cache_size=8GiB"
CORES="$(nproc 2>/dev/null || echo 4)"

die() { echo "gpu_check: $*" >&2; exit 2; }

# ---------------------------------------------------------------- 0. fail fast without CUDA
"$PYTHON" -c "import delibench" 2>/dev/null || die "cannot import delibench with PYTHON=$PYTHON (pip install -e . first, or set PYTHON=.venv/bin/python)"
if [[ $DRY_RUN == 0 ]]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "no CUDA device: nvidia-smi is not on PATH. Run this on a GPU machine (or '$0 --dry-run' to check the command lines)."
    GPU_COUNT="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
    [[ "$GPU_COUNT" -ge 1 ]] || die "no CUDA device: torch.cuda.is_available() is False (torch $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?')). Run this on a GPU machine with a CUDA build of torch (or '$0 --dry-run')."
else
    GPU_COUNT=2
fi
GPUS="${GPUS:-$GPU_COUNT}"
WORKERS=$(( CORES / GPUS )); (( WORKERS >= 1 )) || WORKERS=1; (( WORKERS <= 8 )) || WORKERS=8

mkdir -p "$OUT/results"
OUT="$(cd "$OUT" && pwd)"
CMDS="$OUT/commands.txt"
: > "$CMDS"
START=$(date +%s)
DB=("$PYTHON" -m delibench)

step() {  # step NAME TIMEOUT_S CMD... : log, run with a time limit, stop the script on failure
    local name="$1" limit="$2"; shift 2
    printf '# %s (+%ss)\n%s\n' "$name" "$(( $(date +%s) - START ))" "$*" >> "$CMDS"
    echo "== $name: $*" >&2
    timeout --kill-after=10 "$limit" "$@" || { local rc=$?; echo "gpu_check: step '$name' failed (exit $rc); see $OUT" >&2; exit "$rc"; }
}

if [[ $DRY_RUN == 1 ]]; then
    # The same steps, tiny and on the CPU: calibrate 1 step of batch 2, a 64-sample dataset on a real
    # testbed; 'run' resolves the exact flags of steps 4-5 with --dry-run (--compute cpu: 'cuda'
    # refuses to resolve without a GPU).
    CALIBRATE_SIZE=(--batch-size 2 --steps 1 --warmup 0 --device cpu); MAKE_SIZE=(--samples 64 --preset mnist); COMPUTE=cpu
else
    CALIBRATE_SIZE=(--batch-size "$BATCH"); MAKE_SIZE=(--samples "$SAMPLES" --workers "$CORES"); COMPUTE=cuda
    # ---------------------------------------------------------------- 1. the machine
    nvidia-smi > "$OUT/nvidia-smi.txt"
    nvidia-smi -q > "$OUT/nvidia-smi-q.txt" || true
    nvidia-smi topo -m > "$OUT/nvidia-smi-topo.txt" 2>&1 || true
    "$PYTHON" - > "$OUT/env.txt" <<'PY'
import platform, torch, delibench
print("delibench", delibench.__version__)
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("nccl", ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else "unavailable")
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}", torch.cuda.get_device_name(i))
PY
fi
# ---------------------------------------------------------------- 2. calibrate
step "calibrate" 240 "${DB[@]}" calibrate --workload resnet50 "${CALIBRATE_SIZE[@]}" --out "$OUT/profiles.yaml" --json > "$OUT/calibrate.json"
# ---------------------------------------------------------------- 3. testbed + dataset
trap '"${DB[@]}" testbed down --dir "$OUT/testbed" > /dev/null 2>&1 || true' EXIT
step "testbed up" 90 "${DB[@]}" testbed up --dir "$OUT/testbed" --profile same-region --services s3
eval "$("${DB[@]}" testbed env --dir "$OUT/testbed")"
step "data make" 180 "${DB[@]}" data make "$OUT/imgs" "${MAKE_SIZE[@]}" --force
step "data push" 240 "${DB[@]}" data push "$OUT/imgs" s3://gpucheck/imgs
DATA="s3://gpucheck/imgs"

COMMON=(--data "$DATA" --workload resnet50 --compute "$COMPUTE" --epochs "$EPOCHS" --no-progress --no-diagnose --results-dir "$OUT/results")
EXTRA=(); [[ $DRY_RUN == 1 ]] && EXTRA=(--dry-run)
# ---------------------------------------------------------------- 4. one GPU: bucket vs deli
step "run 1 GPU" 240 "${DB[@]}" run "${COMMON[@]}" --loader bucket --loader "$DELI" --batch-size "$BATCH" --num-workers "$(( CORES < 8 ? CORES : 8 ))" --json "${EXTRA[@]}" > "$OUT/run-1gpu.json"
# ---------------------------------------------------------------- 5. all GPUs: DDP over NCCL
if (( GPUS >= 2 )); then
    step "run $GPUS GPUs (DDP, NCCL)" 240 "${DB[@]}" run "${COMMON[@]}" --loader "$DELI" --batch-size $(( BATCH / 2 )) --num-workers "$WORKERS" --nproc "$GPUS" --json "${EXTRA[@]}" > "$OUT/run-${GPUS}gpu.json"
else
    echo "gpu_check: one GPU visible: the DDP step needs two or more, skipped" | tee -a "$OUT/summary.txt" >&2
fi

if [[ $DRY_RUN == 1 ]]; then
    echo "gpu_check: dry run OK: every command line parsed ($CMDS)" >&2
    exit 0
fi
# ---------------------------------------------------------------- 6. summary
"$PYTHON" - "$OUT" >> "$OUT/summary.txt" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
for path in sorted(glob.glob(os.path.join(out, "run-*.json"))):
    doc = json.load(open(path))
    for rec in doc if isinstance(doc, list) else [doc]:
        m, s = rec["metrics"], rec["loader_stats"]
        print(f"{os.path.basename(path)} {rec['spec']['loader']['kind']:7s} ranks={rec['spec']['world_size']} "
              f"wait={m['data_wait_fraction']:.3f} slowest-rank-per-step={m['slowest_rank_wait_fraction']:.3f} "
              f"throughput={m['throughput_samples_per_s']:.0f}/s compute/step={m['compute_s_mean'] * 1000:.1f}ms "
              f"gpu-util={m['gpu_utilization_mean']} GETs={s['requests_count']} status={rec['status']}")
cal = json.load(open(os.path.join(out, "calibrate.json")))
print("calibrate:", {k: cal.get(k) for k in ("name", "accelerator", "batch_size", "samples_per_s", "step_time_s")})
EOF
cat "$OUT/summary.txt"
echo "gpu_check: done in $(( $(date +%s) - START )) s; records, nvidia-smi output and commands in $OUT" >&2
