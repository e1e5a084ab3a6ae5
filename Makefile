# The two commands of the README contract: `make run` and `make test`.
# Both create .venv if missing and install Sortlab with its dependencies first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test test-slow lint bench package package-test package-full package-full-test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	$(BIN)/python main.py

lint: setup
	$(BIN)/lint-imports

test: setup lint
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider

test-slow: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider -m slow

bench: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist

# The CPU edition (no PyTorch, under 1 GB) in dist/sortlab; see packaging/README.md.
package: setup
	EDITION=cpu bash packaging/build.sh

package-test:
	bash packaging/smoke_test.sh

# The full edition (PyTorch + CUDA) in dist/full/sortlab, tested the same way.
package-full: setup
	EDITION=full DIST=dist/full bash packaging/build.sh

package-full-test:
	SORTLAB_APP=dist/full/sortlab/sortlab bash packaging/smoke_test.sh
