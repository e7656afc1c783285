#!/usr/bin/env bash
# Build the zvstudio desktop bundle with PyInstaller: a runnable folder DIST/zvstudio/ with the
# `zvstudio` program in it (onedir). Everything happens outside the repository:
#
#   1. copy the package sources (pyproject.toml, README.md, zvstudio/, resources/) to a staging
#      folder, so pip's in-tree build leaves no build/ or *.egg-info in the checkout;
#   2. create a fresh virtual environment and `pip install` zvstudio (with its dependencies)
#      and PyInstaller into it;
#   3. run PyInstaller with packaging/zvstudio.spec;
#   4. add share/ (the .desktop file, icons, MIME type) to the folder and check that
#      `zvstudio --version` runs;
#   5. delete the staging folder, PyInstaller's work folder and (unless kept) the venv.
#
# The venv is several GB (torch with its CUDA libraries) and the bundle about as large; the
# build takes 10-25 minutes on a 2-core machine, most of it PyInstaller's analysis of torch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"

usage() {
    cat <<EOF
usage: packaging/build.sh [options]

  -o, --out DIR     build folder (default: \${TMPDIR:-/tmp}/zvstudio-build); holds the venv,
                    the staged sources and PyInstaller's work folder while building
  --dist DIR        where the bundle goes (default: OUT/dist): DIST/zvstudio/zvstudio
  --venv DIR        the build venv (default: OUT/venv); deleted and created anew
  --reuse-venv      keep an existing venv and reinstall only zvstudio into it (quick rebuilds)
  --keep-venv       do not delete the venv at the end
  --python PY       the Python to build with (default: python3); 3.10-3.12, with a shared
                    libpython (PyInstaller needs it)
  --pip-arg ARG     pass ARG to every pip install (repeatable), e.g. --pip-arg=--index-url=URL
  --with-triton     bundle triton too (torch.compile only; about 0.9 GB more)
  -h, --help        this help

The default torch from PyPI bundles its CUDA libraries (they are loaded when torch is
imported, so they cannot be left out). A smaller CPU-only bundle needs a CPU build of torch:
install one into the venv first (--reuse-venv with a venv you prepared).
EOF
}

OUT="${TMPDIR:-/tmp}/zvstudio-build"
DIST=""
VENV=""
REUSE_VENV=0
KEEP_VENV=0
PYTHON="python3"
PIP_ARGS=()
WITH_TRITON=0

while [ $# -gt 0 ]; do
    case "$1" in
        -o | --out) OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#*=}"; shift ;;
        --dist) DIST="$2"; shift 2 ;;
        --dist=*) DIST="${1#*=}"; shift ;;
        --venv) VENV="$2"; shift 2 ;;
        --venv=*) VENV="${1#*=}"; shift ;;
        --reuse-venv) REUSE_VENV=1; shift ;;
        --keep-venv) KEEP_VENV=1; shift ;;
        --python) PYTHON="$2"; shift 2 ;;
        --python=*) PYTHON="${1#*=}"; shift ;;
        --pip-arg) PIP_ARGS+=("$2"); shift 2 ;;
        --pip-arg=*) PIP_ARGS+=("${1#*=}"); shift ;;
        --with-triton) WITH_TRITON=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

OUT="$(realpath -m "$OUT")"
DIST="$(realpath -m "${DIST:-$OUT/dist}")"
VENV="$(realpath -m "${VENV:-$OUT/venv}")"
STAGE="$OUT/src"
WORK="$OUT/work"
for dir in "$OUT" "$DIST" "$VENV"; do
    case "$dir/" in
        "$(realpath "$REPO")"/*)
            echo "build.sh: build outside the repository (not in $dir)" >&2
            exit 2
            ;;
    esac
done
mkdir -p "$OUT" "$DIST"

say() { printf '\n== %s\n' "$*" >&2; }
start=$(date +%s)

cleanup() {
    rm -rf "$STAGE" "$WORK"
    if [ "$KEEP_VENV" = 0 ] && [ "$REUSE_VENV" = 0 ]; then
        rm -rf "$VENV"
    fi
}
trap cleanup EXIT

say "checking $PYTHON"
"$PYTHON" - <<'EOF'
import sys, sysconfig
if not (3, 10) <= sys.version_info[:2] <= (3, 12):
    sys.exit(f"build.sh: zvstudio needs Python 3.10-3.12, this is {sys.version.split()[0]}")
if sysconfig.get_config_var("Py_ENABLE_SHARED") != 1 and sys.platform == "linux":
    sys.exit("build.sh: this Python has no shared libpython, which PyInstaller needs "
             "(pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install ...)")
print(sys.executable, sys.version.split()[0])
EOF

say "staging the sources in $STAGE"
rm -rf "$STAGE"
mkdir -p "$STAGE"
(cd "$REPO" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - \
    pyproject.toml README.md zvstudio resources) | tar -xf - -C "$STAGE"

pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check "${PIP_ARGS[@]}" "$@"; }

if [ "$REUSE_VENV" = 1 ] && [ -x "$VENV/bin/python" ]; then
    say "reusing $VENV: reinstalling zvstudio only"
    pip_install --no-deps --force-reinstall "$STAGE"
    pip_install "$STAGE" "pyinstaller>=6.10"  # any dependency added since
else
    say "creating a fresh venv in $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip_install --upgrade pip
    pip_install "$STAGE" "pyinstaller>=6.10"
fi

say "running PyInstaller (the analysis of torch takes several minutes)"
export ZVSTUDIO_PACK_TRITON="$WITH_TRITON"
rm -rf "$DIST/zvstudio"
(cd "$OUT" && "$VENV/bin/python" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$HERE/zvstudio.spec")

APP="$DIST/zvstudio"
say "adding share/ (desktop entry, icons, MIME type)"
install -Dm644 "$HERE/zvstudio.desktop" "$APP/share/applications/zvstudio.desktop"
install -Dm644 "$HERE/zvstudio-mime.xml" "$APP/share/mime/packages/zvstudio.xml"
install -Dm644 "$REPO/resources/zvstudio.png" "$APP/share/icons/hicolor/256x256/apps/zvstudio.png"
install -Dm644 "$REPO/resources/zvstudio.svg" "$APP/share/icons/hicolor/scalable/apps/zvstudio.svg"

say "checking the bundle"
"$APP/zvstudio" --version

elapsed=$(( $(date +%s) - start ))
size="$(du -sh "$APP" | cut -f1)"
say "built in $((elapsed / 60)) min $((elapsed % 60)) s: $size"
echo "$APP"
