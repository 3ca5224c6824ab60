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

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(DATA)/dataset.json: | $(VENV)/.installed
	$(VENV)/bin/distgan-data prepare fashion-mnist --out $(DATA) --download

data: $(DATA)/dataset.json

demo: $(DATA)/dataset.json
	$(VENV)/bin/distgan-data verify $(DATA)
	mkdir -p $(RUN)
	$(VENV)/bin/distgan-data show $(DATA) --n 64 --out $(RUN)/real_grid.png
	@echo
	@echo "shards:        $(DATA)/ (manifest: $(DATA)/dataset.json)"
	@echo "real samples:  $(RUN)/real_grid.png"

# pytest exits 5 when it collected no test: that is a failure, not a pass.
test: $(VENV)/.installed-dev
	$(PY) -m pytest -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(VENV)/.installed
	$(PY) bench/loader.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
