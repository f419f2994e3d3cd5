# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test,dask]'
	touch $@

.PHONY: install test
install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

.PHONY: demo
demo: $(VENV)/.installed
	$(PY) -m skelpgt.pipelines.demo
