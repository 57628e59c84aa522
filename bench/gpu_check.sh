#!/usr/bin/env bash
# Run bench/gpu_check.py on a GPU machine where tbps is not installed (run from anywhere).
#
#   bash bench/gpu_check.sh [gpu_check.py options]   # e.g. --steps 40, --sections a,b
#   bash bench/gpu_check.sh --prepare                # on a machine with pip: fill .gpu_deps/
#
# PYTHONPATH: src/ (tbps from source) and the carried pure-Python deps that the GPU image lacks:
# hydra-core, omegaconf, antlr4-python3-runtime 4.9.* in .gpu_deps/ (git-ignored; name it in the
# device tool's carry list) or shared/gpu_deps/. Prints nvidia-smi, checks the imports, then runs
# the check under a timeout (GPU_CHECK_TIMEOUT seconds, default 500). With $OUT set the log and
# the JSON go there.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    rm -rf .gpu_deps && mkdir -p .gpu_deps
    tmp=$(mktemp -d)
    "$PY" -m pip download --no-deps -q -d "$tmp" \
        hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
    for whl in "$tmp"/*.whl; do "$PY" -m zipfile -e "$whl" .gpu_deps; done
    tar -xzf "$tmp"/antlr4-python3-runtime-4.9.3.tar.gz -C "$tmp"
    cp -r "$tmp"/antlr4-python3-runtime-4.9.3/src/antlr4 .gpu_deps/antlr4
    rm -rf "$tmp"
    find .gpu_deps -name __pycache__ -prune -exec rm -rf {} +
    du -sh .gpu_deps
    exit 0
fi

path="$PWD/src"
for deps in .gpu_deps shared/gpu_deps; do
    [ -d "$deps" ] && path="$path:$PWD/$deps"
done
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
echo "PYTHONPATH=$PYTHONPATH"
nvidia-smi || echo "nvidia-smi: not available"
"$PY" -c 'import hydra, omegaconf, antlr4, tbps; print("hydra", hydra.__version__, "omegaconf", omegaconf.__version__, "tbps", tbps.__version__)' \
    || echo "warning: an import failed: section (b) (tbps eval) needs hydra and omegaconf"

log=/dev/null
[ -n "${OUT:-}" ] && log="$OUT/gpu_check.log"
set -o pipefail
timeout -k 10 "${GPU_CHECK_TIMEOUT:-500}" "$PY" bench/gpu_check.py "$@" 2>&1 | tee "$log"
code=$?
[ "$code" = 124 ] && echo "gpu_check.py: timed out after ${GPU_CHECK_TIMEOUT:-500} s"
exit "$code"
