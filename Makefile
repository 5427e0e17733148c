# The two commands of the README: `make demo` (main job) and `make test` (test suite).
CONFIG ?= configs/reacher2_sim.yaml

.PHONY: setup demo test bench lint
setup:
	bash scripts/bootstrap.sh

demo: setup
	bash -c 'source scripts/ros_env.sh && mbpl launch $(CONFIG)'

test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

bench: setup
	bash -c 'source scripts/ros_env.sh && for b in bench/*.py; do python $$b || exit 1; done'

lint: setup
	.venv/bin/ruff check .
