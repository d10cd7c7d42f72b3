"""``python -m method.explore``: retrievals with moments (``method.analysis.explore``)."""
from method.analysis.explore import main

if __name__ == "__main__":
    main()
