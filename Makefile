# Shortcuts for developers; scripts/dev.sh is the source of truth.
.PHONY: install demo test unit lint bench

install:
	./scripts/dev.sh install

demo:
	./scripts/dev.sh demo

test:
	./scripts/dev.sh test

unit:
	.venv/bin/pytest -q tests/unit

lint:
	.venv/bin/ruff check bulk tests bench
	.venv/bin/mypy

bench:
	@for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
