# Two commands for a fresh machine: `make app` (set up, start the rating app) and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: app test bench-all setup browser postgres

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	# torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(STAMP)

browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { command -v pg_ctlcluster >/dev/null && pg_ctlcluster 15 main start || true; }
	@for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	  echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1

app: $(STAMP)
	$(VENV)/bin/pickloop init
	$(VENV)/bin/pickloop app

test: $(STAMP) browser postgres
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider
