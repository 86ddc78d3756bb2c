# Two commands on a fresh machine: `make train` and `make test`. Both honour VAELAB_DATA_DIR.
PYTHON ?= python3
VENV ?= .venv
RUN ?= runs/seed-defaults
BIN := $(VENV)/bin

.PHONY: train test test-cpus test-slow notebook docs clean

# The venv is rebuilt when pyproject.toml changes; a stamp per extra avoids reinstalling.
$(VENV)/.installed-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-core $(VENV)/.installed-docs

$(VENV)/.installed-docs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[docs]'
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
# pytest-xdist runs the test files in parallel, one worker per logical core up to 4, each file
# whole on one worker (its module fixtures are built once); tests/conftest.py splits torch's
# threads between the workers. On 2 cores: 8 min 36 s on a fresh clone (README).
PARALLEL = -n logical --maxprocesses 4 --dist loadfile
test: $(VENV)/.installed-test
	@scripts/ensure-chromium $(BIN)/python
	$(BIN)/python -m pytest $(PARALLEL)

# Every test file with a numerical tolerance, again with the kernels of lesser CPUs: torch's
# AVX2 and plain code paths, oneDNN's AVX2 and SSE4.1 convolutions. A tolerance that holds on
# one CPU only fails here rather than on a user's machine. (A file that compares floats with a
# tolerance belongs in this list: tests/test_mutation_config.py fails when one is left out.)
NUMERIC_TESTS = tests/test_losses.py tests/test_model.py tests/test_seed_network.py \
	tests/test_train.py tests/test_evaluate.py tests/test_write_evaluation.py \
	tests/test_quadrature.py tests/test_closed_forms.py tests/test_likelihood8.py \
	tests/test_conditional.py tests/test_figures.py tests/test_explore.py tests/test_options.py \
	tests/test_own_runs.py tests/test_distributed.py tests/test_distributed_helpers.py \
	tests/test_disentangling.py tests/test_discrete.py tests/test_export.py tests/test_tensorboard.py \
	tests/test_data.py tests/test_discretized_units.py tests/test_disentanglement.py \
	tests/test_dsprites.py tests/test_hvae.py tests/test_models.py
test-cpus: $(VENV)/.installed-test
	@scripts/ensure-chromium $(BIN)/python
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q $(PARALLEL) $(NUMERIC_TESTS)
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(BIN)/python -m pytest -q $(PARALLEL) $(NUMERIC_TESTS)

test-slow: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow

# Run the notebook in full (QUICK = False, about 8 minutes on 2 cores), keep its outputs in
# vae_from_scratch.ipynb and render docs/vae_from_scratch.html (nbconvert).
notebook: $(VENV)/.installed-test
	@$(BIN)/python -c "import nbconvert" 2>/dev/null || $(BIN)/pip install --quiet 'nbconvert>=7'
	$(BIN)/python scripts/run_notebook.py

# The documentation site (mkdocs.yml) into site/. --strict: a broken link, a missing page or an
# unresolved reference fails the build. `make test` builds it too and checks it in Chromium.
# (The variables silence a notice about MkDocs 2 that a plugin prints on every build.)
docs: $(VENV)/.installed-docs
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis site

.PHONY: mutation
# Mutation testing (mutmut, [tool.mutmut] in pyproject.toml) of 13 modules against the fast tests
# marked `mutation`; docs/mutation.md is then written from mutmut's records, with the commit.
mutation: $(VENV)/.installed-test
	@test -x $(BIN)/mutmut || $(BIN)/pip install --quiet 'mutmut>=3.8,<4'
	rm -rf mutants
	started=$$(date +%s); \
	VAELAB_DATA_DIR=$${VAELAB_DATA_DIR:-$(abspath ../shared/data)} OMP_NUM_THREADS=1 \
		$(BIN)/mutmut run --max-children 2 && \
	$(BIN)/python scripts/mutation_report.py --seconds $$(( $$(date +%s) - started ))
