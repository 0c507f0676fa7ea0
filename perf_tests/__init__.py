"""The built-in performance suite: ``pytest perf_tests`` in a checkout, ``pytest --pyargs
pytest_glmperf.perf_tests`` wherever the package is installed (the same files)."""
