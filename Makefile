# The two commands of the README: `make demo` (main job) and `make test` (test suite).
CONFIG ?= configs/reacher2_sim.yaml

.PHONY: setup demo test bench lint mutation
setup:
	bash scripts/bootstrap.sh

demo: setup
	bash -c 'source scripts/ros_env.sh && mbpl launch $(CONFIG)'

test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

bench: setup
	bash -c 'source scripts/ros_env.sh && for b in bench/*.py; do python $$b || exit 1; done'

# Mutation score of the fast tests (bench/mutation/run.py; ~10-15 min, not part of `make test` or CI):
# plants the mutants of bench/mutation/mutants.py one at a time in a temporary copy of HEAD, writes
# bench/results/mutation.json. E.g. make mutation MUTATION_ARGS="--files mbpl_core/local/dynamics.py"
mutation: setup
	bash -c 'source scripts/ros_env.sh && python bench/mutation/run.py $(MUTATION_ARGS)'

lint: setup
	.venv/bin/ruff check .
