# Minitwitter: `make run` starts everything, `make test` runs the suite, `make up` / `make down`
# the compose topology, `make test-containers` builds and tests every image. Both create .venv and
# install the pinned requirements themselves; `make test` and `make bench` also install the Debian
# tools they need (scripts/debian-tools.sh: apt-get as root, else one line saying what to run).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/shared:$(CURDIR)

.PHONY: run test test-fast test-containers up down lint typecheck migrate secrets bench bench-instructions worker gateway clean

$(STAMP): shared/requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP) ## start PostgreSQL/Redis if needed, migrations, gateway and workers (foreground)
	$(PY) -m gateway.run

test: $(STAMP) ## the whole test suite against real PostgreSQL, Redis, RQ, nginx, Prometheus
	scripts/debian-tools.sh test
	$(PY) -m pytest $(PYTEST_ARGS)

test-containers: $(STAMP) ## build every image, run the compose topology and the function images
	scripts/debian-tools.sh containers
	PYTHON=$(PY) scripts/containers.sh test $(PYTEST_ARGS)

up: secrets ## the compose topology (nginx, 2 gateways, 2 workers, stores, monitoring), detached
	scripts/debian-tools.sh containers
	scripts/containers.sh up

down: ## stop the compose topology (DOWN_ARGS=-v also deletes its volumes)
	scripts/containers.sh down $(DOWN_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check shared gateway functions templates tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache --no-logo

migrate: $(STAMP)
	$(PY) -m minitwitter.migrate

secrets: $(STAMP) ## generate missing secret files in .secrets/ (git-ignored)
	$(PY) -c "from minitwitter.config import ensure_dev_secrets; print(ensure_dev_secrets())"

worker: $(STAMP)
	$(PY) -m gateway.worker

bench: $(STAMP)
	scripts/debian-tools.sh bench
	$(PY) -m scripts.bench $(BENCH_ARGS)

bench-instructions: $(STAMP) ## instructions per request under valgrind (machine-independent)
	$(PY) -m scripts.instructions $(INSTR_ARGS)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
