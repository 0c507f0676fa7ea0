"""Root conftest: keep pytest out of folders that hold no tests.

The plugin itself is registered through the ``pytest11`` entry point (pip install -e .),
so nothing here loads it. ``pytest`` alone runs the project's own tests (``testpaths``);
``pytest perf_tests`` runs the performance suite users run.
"""

collect_ignore = ["bench", "compose", "docs"]
