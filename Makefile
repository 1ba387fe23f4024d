# Every target that runs project code depends on a stamp: the virtualenv is
# created (or refreshed when pyproject.toml changes) before anything runs.
# $(RUN_STAMP): the package and its run-time dependencies (train, serve, paper-table).
# $(TEST_STAMP): on top of that, the test extra and the torchaudio oracle (test, bench).
PYTHON_BIN ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
TORCHAUDIO_ORACLE ?= torchaudio==2.11.0

.PHONY: venv test bench serve train-audioset paper-table

venv: $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PIP) -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP) pyproject.toml
	$(PIP) -e '.[test]'
	$(PIP) --no-deps $(TORCHAUDIO_ORACLE)
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q

# The test stamp: bench_models times the reference dcls package, bench_service and soak_service drive the server with httpx.
bench: $(TEST_STAMP)
	$(PY) benchmarks/bench_dcls.py
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_precompute.py
	$(PY) benchmarks/bench_datapath.py
	$(PY) benchmarks/bench_service.py
	$(PY) benchmarks/soak_service.py --seconds 60

# The tagging service on 127.0.0.1:8000; settings from the environment (MODELS_DIR, PORT, API_KEY, ...)
# or flags: ARGS="--port 9000 --models-dir /srv/releases" (python -m service --help).
serve: $(RUN_STAMP)
	$(PY) -m service $(ARGS)

# Train, evaluate and release a tagger. With AUDIOSET_ROOT=... (official CSVs + audio,
# or PANNs HDF5) or CONFIG=configs/<recipe>.yaml: precompute -> paper recipe (NPROC=N
# runs torchrun) -> evaluate. Without: the embedded mini-AudioSet on this CPU.
# Extra config overrides: ARGS="seed=1 epochs=30".
train-audioset: $(RUN_STAMP)
	AUDIOSET_ROOT="$(AUDIOSET_ROOT)" CONFIG="$(CONFIG)" NPROC="$(NPROC)" INIT_FROM="$(INIT_FROM)" $(PY) -m pipelines.train_audioset $(ARGS)

# Fine-tune a release onto your own sounds (path,labels CSVs; paths relative to each CSV's folder
# unless AUDIO_DIR): stores -> training (configs/finetune_cpu.yaml) -> evaluation -> release NAME
# -> REPORT.md. INIT_FROM defaults to the embedded default's release when it exists
# (INIT_FROM=none: from scratch). Extra config overrides: ARGS="epochs=20 freeze=stages:2".
.PHONY: finetune
finetune: $(RUN_STAMP)
	TRAIN_CSV="$(TRAIN_CSV)" EVAL_CSV="$(EVAL_CSV)" AUDIO_DIR="$(AUDIO_DIR)" INIT_FROM="$(INIT_FROM)" NAME="$(NAME)" $(PY) -m pipelines.finetune $(ARGS)

# Table 1 of the paper (markdown) from the finished run folders under PAPER_RUNS.
PAPER_RUNS ?= runs
paper-table: $(RUN_STAMP)
	$(PY) -m pipelines.paper_table $(PAPER_RUNS) --out $(PAPER_RUNS)/paper_table.md $(ARGS)
