# The two commands: `make run` runs the node, `make test` runs the tests.
# Both set up the virtual environment from the project's own files first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo test check check-deploy docker bench generate clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e clients/python -e '.[dev]'
	touch $@

run: $(STAMP)
	$(PY) -m server.node

demo: $(STAMP)
	$(PY) -m scripts.demo $(ARGS)

NPM_CI := npm ci --no-audit --no-fund --loglevel=error

generate: $(STAMP)
	cd clients/typescript && $(NPM_CI)
	scripts/generate.sh

check: $(STAMP)
	cd clients/typescript && $(NPM_CI)
	scripts/generate.sh --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code
	scripts/check-breaking.sh

test: check
	scripts/ensure-chromium.sh
	scripts/ensure-llama-server.sh
	$(PY) -m pytest

check-deploy: $(STAMP)
	scripts/check-deploy.sh

docker:
	@test -f .env.local || { touch .env.local; echo "make docker: created an empty .env.local; put POSEMESH_EMAIL and POSEMESH_PASSWORD in it"; }
	docker compose up -d --build

bench: $(STAMP)
	$(PY) -m bench.queue
	$(PY) -m bench.task_timing
	$(PY) -m bench.engines
	$(PY) -m bench.realtime
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) .vlmnode-data
