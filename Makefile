# Everything a fresh machine needs (Python 3.11, no GPU) comes from these targets.
#   make demo   generate 64 shapes, render 8 of them on local Ray (CPU, Cycles), write previews
#   make test   the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= zeroverse-data

.PHONY: install test test-fast chaos demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "zeroverse needs Python 3.11 (bpy 5.0.1): set PYTHON=python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not ray and not blender and not chaos"

chaos: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m chaos

demo: $(BIN)/.installed
	$(BIN)/zeroverse generate --n 64 --root $(DEMO) --shard-size 16
	$(BIN)/zeroverse render --views 8 --resolution 256 --root $(DEMO) --limit 8 --shapes-per-shard 4
	$(BIN)/zeroverse validate --root $(DEMO)
	$(BIN)/zeroverse preview --root $(DEMO) --out $(DEMO)/shapes.png
	$(BIN)/zeroverse preview --root $(DEMO) --views --out $(DEMO)/views.png
	@echo "previews: $(DEMO)/shapes.png $(DEMO)/views.png"

bench: $(BIN)/.installed
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/render.py

clean:
	rm -rf $(VENV) .pytest_cache
