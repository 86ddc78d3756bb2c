# Two commands on a fresh machine: `make train` and `make test`. Both honour VAELAB_DATA_DIR.
PYTHON ?= python3
VENV ?= .venv
RUN ?= runs/seed-defaults
BIN := $(VENV)/bin

.PHONY: train test test-slow clean

# The venv is rebuilt when pyproject.toml changes; a stamp per extra avoids reinstalling.
$(VENV)/.installed-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-core

# Train at the seed's defaults into $(RUN); if that run exists, continue it (a finished
# run prints its table again), so an interrupted `make train` resumes where it stopped.
# A run killed before its first checkpoint has nothing to keep: it starts again (--force).
train: $(VENV)/.installed-core
	@if [ -f $(RUN)/last.pt ]; then \
		echo "resuming $(RUN)"; $(BIN)/vaelab train --resume $(RUN); \
	elif [ -f $(RUN)/config.json ]; then \
		echo "$(RUN) has no checkpoint yet: starting it again"; \
		$(BIN)/vaelab train --out $(RUN) --force; \
	else \
		$(BIN)/vaelab train --out $(RUN); \
	fi

# The browser tests need a Chromium: found, installed (Debian's, as root), or a one-line stop.
test: $(VENV)/.installed-test
	@scripts/ensure-chromium $(BIN)/python
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
