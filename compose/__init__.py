"""The built-in server profiles (profiles.yaml) and their compose files, shipped inside the
package as ``pytest_glmperf.builtin``; a project's own compose/profiles.yaml layers over them."""
