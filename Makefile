# IA-GCN: every target calls the `iagcn` CLI inside the project's own virtual environment.
# `make setup` builds .venv from nothing; every other target depends on it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
IAGCN := $(VENV)/bin/iagcn
STAMP := $(VENV)/.installed

# ---- stage one: extraction ------------------------------------------------------------------
DATASET ?= voc
# dataset root: VOCdevkit/VOC2007 for voc, the COCO folder for coco, an images folder for csv
ROOT ?= data/$(DATASET)
SPLIT ?= trainval
BACKBONE ?= resnet101
WEIGHTS ?= imagenet
PROPOSER ?= torchvision
IMAGE_SIZE ?= 448
NUM_ROIS ?= 40
LABEL_EMBEDDINGS ?= onehot
DEVICE ?= auto
BATCH_SIZE ?= 16
WORKERS ?= 2
CACHE_OUT ?= cache/$(DATASET)/$(SPLIT).h5
EXTRACT_ARGS ?=

# ---- stage two: training ----------------------------------------------------------------------
TRAIN_CACHE ?= cache/$(DATASET)/trainval.h5
VAL_CACHE ?= cache/$(DATASET)/test.h5
PRESET ?= iagcn
PRESETS ?= resnet,mlgcn,idlcm,idlcm-vi,iagcn,comsco,mlgcn-comsco
SEEDS ?= 0,1,2
EPOCHS ?= 120
VAL_FRACTION ?= 0.1
RUN ?= runs/$(DATASET)-$(PRESET)
SWEEP_OUT ?= runs/$(DATASET)-sweep
TRAIN_ARGS ?=

.PHONY: setup test test-slow demo extract train sweep eval bench clean-venv help

help:
	@echo "make demo | test | setup | extract DATASET=voc|coco|csv ROOT=... SPLIT=... | train | sweep | eval | bench"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests/slow

extract: $(STAMP)
	$(IAGCN) extract --dataset $(DATASET) --root $(ROOT) --split $(SPLIT) --out $(CACHE_OUT) \
	  --backbone $(BACKBONE) --weights $(WEIGHTS) --proposer $(PROPOSER) --image-size $(IMAGE_SIZE) \
	  --num-rois $(NUM_ROIS) --label-embeddings $(LABEL_EMBEDDINGS) --batch-size $(BATCH_SIZE) \
	  --workers $(WORKERS) --device $(DEVICE) $(EXTRACT_ARGS)

train: $(STAMP)
	$(IAGCN) train --train-cache $(TRAIN_CACHE) --val-cache $(VAL_CACHE) --preset $(PRESET) \
	  --epochs $(EPOCHS) --val-fraction $(VAL_FRACTION) --device $(DEVICE) --out $(RUN) $(TRAIN_ARGS)

sweep: $(STAMP)
	$(IAGCN) sweep --train-cache $(TRAIN_CACHE) --val-cache $(VAL_CACHE) --presets $(PRESETS) \
	  --seeds $(SEEDS) --epochs $(EPOCHS) --val-fraction $(VAL_FRACTION) --device $(DEVICE) \
	  --out $(SWEEP_OUT) $(TRAIN_ARGS)

eval: $(STAMP)
	$(IAGCN) eval --run $(RUN) --cache $(VAL_CACHE)

bench: $(STAMP)
	$(PY) -m bench.run

clean-venv:
	rm -rf $(VENV)
