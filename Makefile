# Every target that runs project code depends on $(STAMP): the virtualenv is
# created (or refreshed when pyproject.toml changes) before anything runs.
PYTHON_BIN ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCHAUDIO_ORACLE ?= torchaudio==2.11.0

.PHONY: venv test bench serve train-audioset paper-table

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
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_precompute.py
	$(PY) benchmarks/bench_service.py

# The tagging service on 127.0.0.1:8000; settings from the environment (MODELS_DIR, PORT, API_KEY, ...).
serve: $(STAMP)
	$(PY) -m service

# Train, evaluate and release a tagger. With AUDIOSET_ROOT=... (official CSVs + audio,
# or PANNs HDF5) or CONFIG=configs/<recipe>.yaml: precompute -> paper recipe (NPROC=N
# runs torchrun) -> evaluate. Without: the embedded mini-AudioSet on this CPU.
# Extra config overrides: ARGS="seed=1 epochs=30".
train-audioset: $(STAMP)
	AUDIOSET_ROOT="$(AUDIOSET_ROOT)" CONFIG="$(CONFIG)" NPROC="$(NPROC)" INIT_FROM="$(INIT_FROM)" $(PY) -m pipelines.train_audioset $(ARGS)

# Fine-tune a release onto your own sounds (path,labels CSVs; paths relative to each CSV's folder
# unless AUDIO_DIR): stores -> training (configs/finetune_cpu.yaml) -> evaluation -> release NAME
# -> REPORT.md. INIT_FROM defaults to the embedded default's release when it exists
# (INIT_FROM=none: from scratch). Extra config overrides: ARGS="epochs=20 freeze=stages:2".
.PHONY: finetune
finetune: $(STAMP)
	TRAIN_CSV="$(TRAIN_CSV)" EVAL_CSV="$(EVAL_CSV)" AUDIO_DIR="$(AUDIO_DIR)" INIT_FROM="$(INIT_FROM)" NAME="$(NAME)" $(PY) -m pipelines.finetune $(ARGS)

# Table 1 of the paper (markdown) from the finished run folders under PAPER_RUNS.
PAPER_RUNS ?= runs
paper-table: $(STAMP)
	$(PY) -m pipelines.paper_table $(PAPER_RUNS) --out $(PAPER_RUNS)/paper_table.md $(ARGS)
