# The README's two commands: `make demo` (main job on the embedded default) and `make test` (whole suite).
# Both create .venv and install the pinned stack first (infra/setup_env.sh, idempotent).
.PHONY: env demo test lint bench

env:
	bash infra/setup_env.sh

demo: env
	.venv/bin/python -m pipelines.demo

lint: env
	.venv/bin/ruff check actors pipelines tests benches

test: env lint
	.venv/bin/python -m pytest -q -p no:cacheprovider

bench: env
	for b in benches/*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
