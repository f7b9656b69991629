#!/usr/bin/env bash
# The GPU check in one call: the DAVIS reel (bench_run --variant first) and a 1080p reel (DAVIS
# frames upscaled, 300 frames) coloured in this process (bench_run --in-process) on --device,
# with frames/s, PSNR, the GPU's busy share (torch.profiler: CUDA kernel time over wall time) and
# the peak GPU memory (torch.cuda.max_memory_allocated), as JSON and a text table in RESULTS_DIR.
#
#     bench/gpu_check.sh RESULTS_DIR [--device cpu|cuda] [--quick] [--davis DIR]
#
# Runs under the machine's own python3 (PYTHON overrides): torch (2.11 or later), OpenCV,
# scikit-image, click and pillow must be there; PyAV and kornia, when missing, come from
# bench/wheels/ (bench/fetch_gpu_wheels.sh, run once where a registry is reachable), unpacked
# into a folder put on PYTHONPATH. The checkout's own code is imported (PYTHONPATH=.), nothing
# is installed into the system. Without a DAVIS folder the reels are synthetic (two generated
# shots, not scored). --quick: a few frames of each reel (the CI smoke test, under a minute on
# a 2-core CPU).
set -euo pipefail
usage="usage: bench/gpu_check.sh RESULTS_DIR [--device cpu|cuda] [--quick] [--davis DIR]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
results=$(mkdir -p "$1" && cd "$1" && pwd)
shift
device=cuda quick=0
root=$(cd "$(dirname "$0")/.." && pwd)
davis=${DAVIS:-$root/../shared/data/davis}
while [ $# -gt 0 ]; do
    case $1 in
        --device) device=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --davis) davis=$2; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
case $device in cpu|cuda) ;; *) echo "--device must be cpu or cuda, got $device" >&2; exit 2 ;; esac
cd "$root"
py=${PYTHON:-python3}
missing=$("$py" - <<'PY'
import importlib.util
print(" ".join(m for m in ("av", "kornia", "kornia_rs") if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    site=${TMPDIR:-/tmp}/postprod-gpu-site
    mkdir -p "$site"
    archive=$(ls bench/wheels/site-py*.tar.xz 2>/dev/null | head -1 || true)
    if [ -n "$archive" ]; then
        tar -C "$site" -xJf "$archive"
    elif compgen -G "bench/wheels/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" bench/wheels/*.whl
    else
        echo "bench/gpu_check.sh: $missing missing and no bench/wheels/ (run bench/fetch_gpu_wheels.sh)" >&2
        exit 2
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$results/env.txt"
if [ "$device" = cuda ] && ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "bench/gpu_check.sh: --device cuda but torch sees no GPU" >&2
    exit 2
fi
common=(--variant first --in-process --device "$device" --work "$results/work")
if [ -d "$davis" ]; then
    data=(--davis "$davis")
    if [ $quick = 1 ]; then
        reel=(--sequences blackswan --max-frames 4)
        hd=(--sequences blackswan --max-frames 3)
    else
        reel=()  # all 12 sequences
        hd=(--sequences blackswan camel dog goat car-shadow --max-frames 60)  # 5 x 60 = 300 frames
    fi
else
    echo "no DAVIS folder at $davis: synthetic reels, not scored"
    data=(--synthetic) reel=() hd=()
fi
rm -rf "$results/work"
mkdir -p "$results/work"
"$py" -m bench.bench_run "${common[@]}" "${data[@]}" "${reel[@]}" --out "$results/davis.json" \
    --work "$results/work/davis" | tee "$results/davis.txt"
"$py" -m bench.bench_run "${common[@]}" "${data[@]}" "${hd[@]}" --size 1920x1080 --out "$results/1080p.json" \
    --work "$results/work/1080p" | tee "$results/1080p.txt"
rm -rf "$results/work"
"$py" - "$results" <<'PY'
import json, sys
from pathlib import Path

results = Path(sys.argv[1])
rows = {}
for name in ("davis", "1080p"):
    r = json.loads((results / f"{name}.json").read_text())["run"]
    rows[name] = {
        "frames": r["reel_frames"],
        "seconds": round(r["seconds"], 2),
        "fps": round(r["fps"], 3),
        "psnr_nonkey": round(r["psnr_nonkey"], 2) if "psnr_nonkey" in r else None,
        "media_ok": r["media"]["ok"],
        "gpu_share": round(r["gpu_share"], 3) if "gpu_share" in r else None,
        "peak_gpu_mib": round(r["peak_gpu_mib"]) if "peak_gpu_mib" in r else None,
        "peak_rss_mib": round(r["peak_rss_mib"]),
    }
(results / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
head = ["reel", "frames", "seconds", "frames/s", "PSNR dB", "media ok", "GPU busy", "peak GPU MiB", "peak RSS MiB"]
lines = [" | ".join(head)]
for name, r in rows.items():
    share = "-" if r["gpu_share"] is None else f"{100 * r['gpu_share']:.1f} %"
    cells = [name, r["frames"], r["seconds"], r["fps"], r["psnr_nonkey"] or "-", r["media_ok"], share]
    lines.append(" | ".join(str(c) for c in [*cells, r["peak_gpu_mib"] or "-", r["peak_rss_mib"]]))
(results / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
if not all(r["media_ok"] for r in rows.values()):
    sys.exit("media checks failed")
PY
