#!/usr/bin/env bash
# On the lent GPU machine, from the repository root: install the carried wheels, then run the
# named steps (default: all), each writing its JSON or log to $OUT/STEP.json|log. A failing step
# does not stop the others. One `run` call may last 10 minutes: name a few steps per call.
#   .ci/gpu/run_benches.sh kernel keys       # e.g.; steps listed below
set -uo pipefail
out="${OUT:-/tmp/zvstudio-gpu}"
mkdir -p "$out" /tmp/site /tmp/models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
zv=(python3 -m zvstudio)
clips=(.clips/car-turn.mp4 .clips/boxer-punching-towards-camera.mp4)

step() { # step NAME COMMAND...: stdout to NAME.json, stderr to NAME.log
    local name="$1"
    shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@" >"$out/$name.json" 2>"$out/$name.log"
    echo "   exit $? after $((SECONDS - started)) s"
    tail -n 3 "$out/$name.log"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(info kernel keys propagate render generate dynamicrafter)
for name in "${steps[@]}"; do
    case "$name" in
    info) step info bash -c 'nvidia-smi; python3 -c "import torch, triton, diffusers, av;
print(torch.__version__, triton.__version__, diffusers.__version__, av.__version__)"' ;;
    kernel)
        step kernel python3 -m pytest -q -p no:cacheprovider tests/test_patch_kernel.py
        step patch-distance "${zv[@]}" bench patch-distance --device cuda
        ;;
    keys) step keys "${zv[@]}" bench keys --random-weights --device cuda --model-dir /tmp/models ;;
    propagate)
        step propagate "${zv[@]}" bench propagate "${clips[@]}" --device cuda
        step propagate-medium "${zv[@]}" bench propagate "${clips[@]}" --device cuda \
            --flow-preset medium --no-1080p
        step propagate-patch "${zv[@]}" bench propagate "${clips[@]}" --device cuda --synthesis patch
        ;;
    render)
        step render "${zv[@]}" bench render --random-sd15 --device cuda --model-dir /tmp/models
        ;;
    generate) step generate "${zv[@]}" bench generate --device cuda --model-dir /tmp/models ;;
    dynamicrafter) step dynamicrafter "${zv[@]}" bench dynamicrafter --device cuda ;;
    *) echo "unknown step $name" >&2 ;;
    esac
done
