# Sourced by the device scripts (roundN.sh) after they set ROOT: run from the
# repository, with the carried libraries and Python packages, results to $OUT.
cd "$ROOT"
export LD_LIBRARY_PATH="$ROOT/.carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT:$ROOT/.carry/py"
OUT=${OUT:-/tmp/out}
N=$(nproc)
