# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/fashion-mnist
RUN ?= runs/demo

.PHONY: demo test install install-dev data bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-serve: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[serve]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed node_modules/.package-lock.json
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The browser tests' npm packages (axe-core; the web export's onnxruntime-web), exactly as package-lock.json says.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev node_modules/.package-lock.json

$(DATA)/dataset.json: | $(VENV)/.installed
	$(VENV)/bin/distgan-data prepare fashion-mnist --out $(DATA) --download

data: $(DATA)/dataset.json

# Every GPU when there are some (the house config's full schedule: minutes on one H100); else
# 2 gloo processes on the CPU with the same global batch (2 x 32), half the width and a short schedule.
NGPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
ifeq ($(NGPUS),0)
LAUNCH := ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 $(VENV)/bin/accelerate launch --multi_gpu --num_processes 2
DEMO_SCHEDULE ?= data.batch_size=32 model.ngf=64 model.ndf=64 train.steps=1400 train.log_every=50 train.sample_every=200 train.checkpoint_every=400
else ifeq ($(NGPUS),1)
LAUNCH := $(VENV)/bin/accelerate launch --num_processes 1
else
LAUNCH := $(VENV)/bin/accelerate launch --multi_gpu --num_processes $(NGPUS)
endif
LAUNCH += --num_machines 1 --mixed_precision no --dynamo_backend no
DEMO_CONFIG ?= configs/fashion_house.yaml

demo: $(DATA)/dataset.json | $(VENV)/.installed-serve
	$(VENV)/bin/distgan-data verify $(DATA)
	mkdir -p $(RUN)
	$(VENV)/bin/distgan-data show $(DATA) --n 64 --out $(RUN)/real_grid.png
	$(LAUNCH) distgan/train.py --config $(DEMO_CONFIG) name=$(notdir $(RUN)) run_dir=$(dir $(RUN)) data.path=$(DATA) $(DEMO_SCHEDULE) $(DEMO_ARGS)
	$(VENV)/bin/distgan-export --onnx $(RUN) --out $(RUN)/generator.onnx
	$(VENV)/bin/distgan-sample --onnx $(RUN)/generator.onnx --n 64 --seed 0 --grid $(RUN)/onnx_grid.png
	@echo
	@echo "shards:         $(DATA)/ (manifest: $(DATA)/dataset.json)"
	@echo "real samples:   $(RUN)/real_grid.png"
	@echo "fake samples:   $(RUN)/samples/ (last: $$(ls $(RUN)/samples | tail -1)), progress: $(RUN)/progress.gif"
	@echo "losses:         $(RUN)/losses.png, $(RUN)/metrics.jsonl"
	@echo "generator:      $(RUN)/generator/ (EMA weights + architecture)"
	@echo "ONNX:           $(RUN)/generator.onnx (+ generator.opt.onnx), parity-checked against torch"
	@echo "ONNX samples:   $(RUN)/onnx_grid.png (onnxruntime only: distgan-sample, or export/generate.py)"
	@echo "checkpoints:    $(RUN)/checkpoints/ (make demo again resumes; rm -r $(RUN) to start over)"
	@echo
	@echo "explore it in a browser (then open http://127.0.0.1:8000/; from a laptop: ssh -L 8000:127.0.0.1:8000 THIS_HOST):"
	@echo "  $(VENV)/bin/distgan-serve $(RUN)/generator.onnx"

# pytest exits 5 when it collected no test: that is a failure, not a pass.
test: $(VENV)/.installed-dev node_modules/.package-lock.json
	$(PY) -m pytest -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(VENV)/.installed-dev
	$(PY) bench/loader.py
	$(PY) bench/infer.py
	$(PY) bench/train.py
	$(PY) bench/serve.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
