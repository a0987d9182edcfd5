# make demo : fresh machine → venv, install, run the quickstart scenario
# make test : fresh machine → venv, install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgegan simulate --scenario quickstart --out runs/quickstart

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup -m "not timing" --durations=15 tests
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m timing tests

clean:
	rm -rf $(VENV) runs .pytest_cache
