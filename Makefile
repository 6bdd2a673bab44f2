# The two commands of the README. Both install what they need into .venv first.
.PHONY: demo test lint setup

setup:
	@bash scripts/bootstrap.sh

demo: setup
	.venv/bin/maskdepth demo

lint: setup
	.venv/bin/ruff check src tests benchmarks scripts

test: lint
	.venv/bin/python -m pytest
