#!/usr/bin/env bash
# The one prepared GPU check: samseg_core only (no FiftyOne, no database), under 8 minutes on one GPU.
#
#   bash bench/device_check.sh fetch    # here, where the package registry answers: the wheels the GPU machine
#                                       # lacks go to .whl/ (git-ignored; about 16 MB)
#   bash bench/device_check.sh          # on the GPU machine, with .whl carried along (device tool: carry [".whl"])
#
# The GPU machine has torch, torchvision, timm, OpenCV, scipy and scikit-image but not segment_anything,
# open_clip (+ ftfy, wcwidth) or pycocotools; transformers is carried too, so the SAM 2 code runs on the
# release samseg pins. Prints bench/gpu.py's table (images/s and peak GPU memory per stage, random weights of
# the full-size architectures: vit_h with the engine rows, SAM 2.1 Hiera-L without) and bench/amg.py on vit_h (samseg's generator vs
# segment_anything's on the same model), each under its own time limit.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHEELS=(
    segment-anything==1.0
    open_clip_torch==3.3.0
    ftfy==6.3.1
    wcwidth==0.9.4
    pycocotools==2.0.11
    transformers==5.24.0
)

if [ "${1:-}" = "fetch" ]; then
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
    ls -la .whl
    exit 0
fi

started=$(date +%s)
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no wheels in .whl/: run 'bash bench/device_check.sh fetch' first and carry .whl" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

status=0
echo "=== bench/gpu.py (2 images of 768x1024; reference loops on 1 image; engine rows for the first model) ==="
timeout 200 python3 bench/gpu.py --images 2 --size 768x1024 --reference-images 1 --sam vit_h || status=$?
timeout 120 python3 bench/gpu.py --images 2 --size 768x1024 --reference-images 1 --sam sam2.1-hiera-large \
    --skip-engine || status=$?
echo "=== bench/amg.py --device cuda --model vit_h ==="
timeout 150 python3 bench/amg.py --device cuda --model vit_h || status=$?
echo "device_check: $(( $(date +%s) - started )) s, exit status $status"
exit "$status"
