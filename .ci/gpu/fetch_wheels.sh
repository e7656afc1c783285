#!/usr/bin/env bash
# Wheels of the dependencies that the lent GPU machine lacks (it has Python 3.12, torch,
# transformers, peft, accelerate, OpenCV and SciPy), into .whl/, which git ignores. Carry it with
# the device tool's `run` (carry: [".whl", ".clips"]) and start the command with run_benches.sh.
# The shared clips are copied into .clips/ too: ../shared does not travel.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p "$(git rev-parse --git-path info)"
for ignored in /.whl/ /.clips/; do
    grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
done
rm -rf .whl && mkdir -p .whl
# The versions CI installs today (pyproject only sets lower bounds).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 av==18.1.0 ftfy==6.3.1 wcwidth==0.9.4
python3 -m pip wheel -q --no-deps -w .whl openai-clip==1.0.1 # an sdist only: built here
if [ -d ../shared/clips ]; then
    rm -rf .clips && mkdir -p .clips && cp ../shared/clips/*.mp4 .clips/
fi
du -sh .whl .clips 2>/dev/null || true
