"""``python -m method.extract_teacher``: the CLIP teacher extractor, now `method.extract.teacher`.

Importing this module gives that module itself (same functions, and patching
one patches the other); running it runs its `main`.
"""
import sys

if __name__ == "__main__":
    from method.extract.teacher import main

    sys.exit(main())
else:
    from method.extract import teacher as _teacher

    sys.modules[__name__] = _teacher
