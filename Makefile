# Every target that runs project code depends on $(STAMP): the virtualenv is
# created (or refreshed when pyproject.toml changes) before anything runs.
PYTHON_BIN ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCHAUDIO_ORACLE ?= torchaudio==2.11.0

.PHONY: venv test bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(TORCHAUDIO_ORACLE)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_dcls.py
