"""``python -m method.report``: the HTML report of a run (``method.analysis.report``)."""
from method.analysis.report import main

if __name__ == "__main__":
    main()
