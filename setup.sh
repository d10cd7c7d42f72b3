# For researchers who manage their own environment:  source setup.sh
# puts this project on PYTHONPATH so that `python -m method.train ...` works.
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
