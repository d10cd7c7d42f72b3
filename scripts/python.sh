# Sourced by the launch scripts: picks the Python to run and puts the project on PYTHONPATH.
# Uses $PYTHON when set, else this checkout's .venv (made by ./do_demo.sh or ./run_tests.sh), else python3.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$_root/.venv/bin/python" ]; then PYTHON="$_root/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
unset _root
