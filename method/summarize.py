"""``python -m method.summarize``: mean ± std over seeds (``method.analysis.summarize``)."""
from method.analysis.summarize import main

if __name__ == "__main__":
    main()
