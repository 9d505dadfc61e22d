# IA-GCN: every target calls the `iagcn` CLI inside the project's own virtual environment.
# `make setup` builds .venv from nothing; every other target depends on it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
IAGCN := $(VENV)/bin/iagcn
STAMP := $(VENV)/.installed

# ---- stage one: extraction ------------------------------------------------------------------
# `make extract` uses the CLI's own defaults: the OFFLINE EfficientNet-Lite0 (bundled ImageNet weights) +
# OpenCV selective search. `make extract-paper` uses the paper's setting: ResNet-101 at 448 px + the
# torchvision Faster R-CNN RPN (downloads torchvision's weights once).
DATASET ?= voc
# dataset root: VOCdevkit/VOC2007 for voc, the COCO folder for coco, an images folder for csv
ROOT ?= data/$(DATASET)
SPLIT ?= trainval
BACKBONE ?= efficientnet-lite0
WEIGHTS ?= imagenet
PROPOSER ?= selective-search
# empty = the backbone's default input side (efficientnet-lite0 320, resnet101 448)
IMAGE_SIZE ?=
NUM_ROIS ?= 40
# csv datasets: the image,labels file; the class list (comma-separated or a file) or the cache to copy it from
# (CLASSES_FROM=cache/csv/train.h5 for the test split); the delimiter between labels (empty = whitespace)
CSV ?=
CLASSES ?=
CLASSES_FROM ?=
LABEL_SEP ?=
LABEL_EMBEDDINGS ?= onehot
DEVICE ?= auto
BATCH_SIZE ?= 16
WORKERS ?= 2
CACHE_OUT ?= cache/$(DATASET)/$(SPLIT).h5
EXTRACT_ARGS ?=

# ---- stage two: training ----------------------------------------------------------------------
TRAIN_CACHE ?= cache/$(DATASET)/trainval.h5
# the evaluation (test) split, scored once at the end (VAL_CACHE: its old name, still accepted)
EVAL_CACHE ?= $(or $(VAL_CACHE),cache/$(DATASET)/test.h5)
# a YAML/JSON config for train/sweep (e.g. a previous run's config.json); options on the command line win
# (the resolution order: docs/training.md, "Resolution order")
CONFIG ?=
PRESET ?= iagcn
# empty = the CLI's default: every preset of train/config.py PRESETS
PRESETS ?=
SEEDS ?= 0,1,2
# optimisation recipe (docs/training.md): frozen or paper (section 4.3); empty = the CONFIG file's recipe:, else
# the CLI's default (frozen). Only a RECIPE you give is passed, so it never overrides the file's silently.
RECIPE ?=
# empty = the recipe's own value (frozen: 20 epochs, last epoch; paper: 120 epochs, 10% hold-out)
EPOCHS ?=
VAL_FRACTION ?=
RECIPE_ARGS = $(if $(RECIPE),--recipe $(RECIPE)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
  $(if $(VAL_FRACTION),--val-fraction $(VAL_FRACTION))
RUN ?= runs/$(DATASET)-$(PRESET)
SWEEP_OUT ?= runs/$(DATASET)-sweep
TRAIN_ARGS ?=

# ---- the demo (`make demo`; see docs/demo.md) --------------------------------------------------
# Small on purpose: the whole pipeline on synthetic data, offline, in ~5 minutes on 2 CPU cores.
DEMO_OUT ?= demo_out
DEMO_TRAIN ?= 200
DEMO_TEST ?= 100
DEMO_IMAGE_SIZE ?= 192
DEMO_PROPOSER_SIZE ?= 128
DEMO_NUM_ROIS ?= 16
DEMO_EPOCHS ?= 8
DEMO_SEEDS ?= 0
DEMO_BASELINE ?= mlgcn
# the demo's 7 presets: the paper's rows (Tables 3-6), without the two one-change controls
DEMO_PRESETS ?= resnet,mlgcn,idlcm,idlcm-vi,iagcn,comsco,mlgcn-comsco
DEMO_PREDICT ?= 4
DEMO_ROOT := $(DEMO_OUT)/data/VOCdevkit/VOC2007
DEMO_EXTRACT := --dataset voc --root $(DEMO_ROOT) --image-size $(DEMO_IMAGE_SIZE) \
  --proposer-image-size $(DEMO_PROPOSER_SIZE) --num-rois $(DEMO_NUM_ROIS) --workers 2 --device cpu

.PHONY: setup test test-slow test-detectron2 demo extract extract-paper train sweep eval bench bench-real clean-venv help

help:
	@echo "make demo                 the whole pipeline offline on synthetic data (docs/demo.md)"
	@echo "make test | test-slow     the test suite"
	@echo "make extract DATASET=voc|coco|csv ROOT=... SPLIT=... [CACHE_OUT=...]"
	@echo "     stage one with the CLI's OFFLINE defaults: BACKBONE=$(BACKBONE) PROPOSER=$(PROPOSER)"
	@echo "     csv data: CSV=labels.csv [CLASSES=a,b,c | CLASSES_FROM=cache/csv/train.h5] [LABEL_SEP=';']"
	@echo "make extract-paper ...    stage one in the PAPER's setting: resnet101 at 448 px + torchvision RPN (downloads weights)"
	@echo "make train PRESET=iagcn TRAIN_CACHE=... EVAL_CACHE=... [CONFIG=run/config.json] [TRAIN_ARGS='--lr 0.02']"
	@echo "make sweep PRESETS=a,b SEEDS=0,1,2 TRAIN_CACHE=... EVAL_CACHE=... [SWEEP_OUT=...]"
	@echo "make eval RUN=runs/... EVAL_CACHE=...   |   make bench   |   make setup"

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

# the Detectron2 proposer against the real library (docs/detectron2.md). Detectron2 is not on the package registry:
# the wheel in $(SHARED_DIR)/wheels is installed into .venv when it is there (with its registry dependencies); without it,
# Detectron2 must already be installed in .venv (e.g. built from source). `make test` never needs it.
SHARED_DIR ?= ../shared
D2_WHEEL = $(firstword $(wildcard $(SHARED_DIR)/wheels/detectron2-*.whl))
test-detectron2: $(STAMP)
	@if [ -n "$(D2_WHEEL)" ]; then \
	  echo "== installing $(D2_WHEEL) and its registry dependencies into $(VENV)"; \
	  $(PY) -m pip install --quiet "$(D2_WHEEL)"; \
	elif ! $(PY) -c "import detectron2" 2>/dev/null; then \
	  echo "make test-detectron2: no detectron2-*.whl in $(SHARED_DIR)/wheels and Detectron2 is not installed in $(VENV);" \
	    "install it from source (docs/detectron2.md) or give SHARED_DIR=FOLDER (a folder with wheels/)"; exit 2; \
	fi
	IAGCN_SHARED=$(abspath $(SHARED_DIR)) IAGCN_REQUIRE_DETECTRON2=1 $(PY) -m pytest -q -m detectron2

EXTRACT_CMD = $(IAGCN) extract --dataset $(DATASET) --root $(ROOT) --split $(SPLIT) --out $(CACHE_OUT) \
	  --weights $(WEIGHTS) --num-rois $(NUM_ROIS) --label-embeddings $(LABEL_EMBEDDINGS) --batch-size $(BATCH_SIZE) \
	  --workers $(WORKERS) --device $(DEVICE) $(if $(CSV),--csv '$(CSV)') $(if $(CLASSES),--classes '$(CLASSES)') \
	  $(if $(CLASSES_FROM),--classes-from '$(CLASSES_FROM)') $(if $(LABEL_SEP),--label-sep '$(LABEL_SEP)')

extract: $(STAMP)
	$(EXTRACT_CMD) --backbone $(BACKBONE) --proposer $(PROPOSER) $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) \
	  $(EXTRACT_ARGS)

extract-paper: $(STAMP)
	$(EXTRACT_CMD) --backbone resnet101 --proposer torchvision --image-size $(or $(IMAGE_SIZE),448) $(EXTRACT_ARGS)

# with CONFIG=FILE, a variable left at its Makefile default is not passed, so the file's value holds
opt = $(if $(and $(CONFIG),$(filter file,$(origin $(1)))),,$(2) $($(1)))

train: $(STAMP)
	$(IAGCN) train $(if $(CONFIG),--config '$(CONFIG)') --train-cache $(TRAIN_CACHE) --eval-cache $(EVAL_CACHE) \
	  $(call opt,PRESET,--preset) $(RECIPE_ARGS) $(call opt,DEVICE,--device) --out $(RUN) $(TRAIN_ARGS)

sweep: $(STAMP)
	$(IAGCN) sweep $(if $(CONFIG),--config '$(CONFIG)') --train-cache $(TRAIN_CACHE) --eval-cache $(EVAL_CACHE) \
	  $(if $(PRESETS),--presets $(PRESETS)) --seeds $(SEEDS) $(RECIPE_ARGS) $(call opt,DEVICE,--device) --out $(SWEEP_OUT) $(TRAIN_ARGS)

eval: $(STAMP)
	$(IAGCN) eval --run $(RUN) --cache $(EVAL_CACHE)

demo: $(STAMP)
	@set -e; t0=$$(date +%s); export OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2}; \
	echo "== iagcn demo: synthetic data -> features -> 7 presets -> tables, plots, figures, predictions"; \
	echo "== everything goes to $(DEMO_OUT)/ (delete it for a fresh run; finished steps are skipped on a rerun)"; \
	echo "== [1/7] synthetic VOC-layout dataset: $(DEMO_TRAIN) trainval + $(DEMO_TEST) test images"; \
	$(IAGCN) synth --out $(DEMO_OUT)/data --train $(DEMO_TRAIN) --test $(DEMO_TEST) --seed 0 --workers 2; \
	echo "== [2/7] stage one: EfficientNet-Lite0 (bundled ImageNet weights) + selective search, trainval"; \
	$(IAGCN) extract $(DEMO_EXTRACT) --split trainval --out $(DEMO_OUT)/cache/trainval.h5; \
	echo "== [3/7] stage one: the test split"; \
	$(IAGCN) extract $(DEMO_EXTRACT) --split test --out $(DEMO_OUT)/cache/test.h5; \
	echo "== [4/7] stage two: sweep over all 7 presets + the linear probe (frozen recipe, $(DEMO_EPOCHS) epochs, the last epoch; seeds $(DEMO_SEEDS); ΔmAP vs $(DEMO_BASELINE) by paired bootstrap over test images)"; \
	$(IAGCN) sweep --train-cache $(DEMO_OUT)/cache/trainval.h5 --eval-cache $(DEMO_OUT)/cache/test.h5 \
	  --presets $(DEMO_PRESETS) --seeds $(DEMO_SEEDS) --epochs $(DEMO_EPOCHS) --device cpu --out $(DEMO_OUT)/sweep \
	  --baseline $(DEMO_BASELINE); \
	echo "== [5/7] evaluation: IA-GCN and the ML-GCN base side by side (Table 1 and Table 2 layouts, plots)"; \
	$(IAGCN) eval --run $(DEMO_OUT)/sweep/iagcn-s0 --run $(DEMO_OUT)/sweep/$(DEMO_BASELINE)-s0 \
	  --cache $(DEMO_OUT)/cache/test.h5 --out $(DEMO_OUT)/eval --quiet; \
	image=$$(head -1 $(DEMO_OUT)/sweep/iagcn-s0/image_ids.txt); \
	echo "== [6/7] explain test image $$image: Fig. 1 (A_F next to A_S) and Fig. 3 (ROIs coloured by z)"; \
	$(IAGCN) explain --run $(DEMO_OUT)/sweep/iagcn-s0 --cache $(DEMO_OUT)/cache/test.h5 --image-id $$image \
	  --out $(DEMO_OUT)/explain; \
	images=$$(head -$(DEMO_PREDICT) $(DEMO_ROOT)/ImageSets/Main/test.txt | sed 's|^\(.*\)$$|$(DEMO_ROOT)/JPEGImages/\1.jpg|'); \
	echo "== [7/7] predict $(DEMO_PREDICT) test images from their files (stage one on the fly + the IA-GCN head)"; \
	$(IAGCN) predict --run $(DEMO_OUT)/sweep/iagcn-s0 --top-k 3 $$images; \
	echo "   objects in their annotations (difficult ones included):"; \
	for id in $$(head -$(DEMO_PREDICT) $(DEMO_ROOT)/ImageSets/Main/test.txt); do \
	  echo "   $$id: $$(grep -o '<name>[a-z]*</name>' $(DEMO_ROOT)/Annotations/$$id.xml | sed 's/<[^>]*>//g' | sort -u | paste -sd' ')"; \
	done; \
	echo "== done in $$(( $$(date +%s) - t0 )) s. Outputs in $(DEMO_OUT)/:"; \
	echo "   sweep/table.md, sweep/results.csv, sweep/ablation.json   ablation table (with the ΔmAP-vs-$(DEMO_BASELINE) 95% interval), one row per run"; \
	echo "   sweep/report.html               one self-contained page: the table, every run, per-class AP, training and PR curves"; \
	echo "   sweep/<preset>-s<seed>/         runs (config, log, checkpoints, scores, metrics)"; \
	echo "   eval/                           tables.md (both runs), per_class_ap.png, pr_curves.png + training_curves.png overlaid;"; \
	echo "                                   eval/<run>/: metrics.json, tables.md, per_class_ap.csv, scores.npz, plots"; \
	echo "   explain/                        fig1_lcm_<id>.png, fig3_rois_<id>.png (+ .npz with the numbers drawn)"

bench: $(STAMP)
	$(PY) -m bench.run

# the real-photo benchmark (docs/real-data.md): split VOC_ROOT's ids, extract, 7 presets x 5 seeds + the probe
VOC_ROOT ?=
REAL_SEEDS ?= 0,1,2,3,4
REAL_WORK ?= /tmp/iagcn-bench/real
REAL_ARGS ?=
bench-real: $(STAMP)
	@test -n "$(VOC_ROOT)" || { echo "make bench-real VOC_ROOT=path/to/VOCdevkit/VOC2007 (a VOC2007-layout folder)"; exit 2; }
	$(PY) -m bench.real --voc-root $(VOC_ROOT) --seeds $(REAL_SEEDS) --work $(REAL_WORK) $(REAL_ARGS)

clean-venv:
	rm -rf $(VENV)
