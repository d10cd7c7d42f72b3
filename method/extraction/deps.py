"""Import of the optional extraction packages (transformers, av, pillow), only when needed."""
import importlib


def import_optional(module):
    """Import an optional extractor dependency, or exit with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(
            f"feature extraction needs the optional package providing {module!r} ({exc}).\n"
            f"Install the extractor requirements into the project environment:\n"
            f"    .venv/bin/pip install -r requirements-extract.txt") from exc
