"""Looking at a trained run: retrievals with moments (``explore``), the HTML report and its figures
(``report``, ``plots``), tables over seeds (``summarize``); ``retrieval`` (a run encoded on one split: ranks,
top-k, per-position curves), ``moments`` (moment estimates and IoU metrics) and ``moment_file`` (the
ground-truth moments file) are their building blocks. Commands: ``python -m method.explore``,
``method.report``, ``method.summarize`` (entry points at the package's top level).
"""
