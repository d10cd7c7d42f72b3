"""``python -m method.demo_data``: the demo dataset in the released layout (``method.data.demo``)."""
from method.data.demo import main

if __name__ == "__main__":
    main()
