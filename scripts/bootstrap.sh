# Sourced by ./run_tests.sh and ./do_demo.sh: creates (once) a virtual
# environment in .venv, installs the requirements and activates it.
# Usage: source scripts/bootstrap.sh [requirements-file]
_req="${1:-requirements.txt}"
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${DLDKD_VENV:-$_root/.venv}"
if [ ! -x "$_venv/bin/python" ]; then
    echo "[bootstrap] creating virtual environment in $_venv"
    python3 -m venv "$_venv" || { echo "[bootstrap] python3 -m venv failed" >&2; return 1; }
fi
# shellcheck disable=SC1091
. "$_venv/bin/activate"
_stamp="$_venv/.installed-$(basename "$_req")"
if [ ! -f "$_stamp" ] || [ "$_root/$_req" -nt "$_stamp" ] || [ "$_root/requirements.txt" -nt "$_stamp" ]; then
    # A bare torch requirement would pull the CUDA build; take the CPU wheel first.
    if ! python -c "import torch" >/dev/null 2>&1; then
        echo "[bootstrap] installing torch==2.13.0"
        python -m pip install -q torch==2.13.0 || return 1
    fi
    echo "[bootstrap] installing $_req"
    python -m pip install -q -r "$_root/$_req" || return 1
    touch "$_stamp"
fi
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
unset _req _root _venv _stamp
