# Two commands run radcore from a fresh clone:
#   make run    set up (venv, build) and start a server with a demo series on the embedded LMDB store
#   make test   set up, install the system packages the tests talk to, and run the whole suite
# Everything else here is a building block of those two.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.radcore-installed
CONFIG ?= examples/radcore.toml
SOURCES := pyproject.toml setup.py $(wildcard radcore/*.pyx radcore/*.pxd radcore/*.pxi bench/*.pyx bench/*.pxi bench/*.h protos/radcore/v1/*.proto)

.PHONY: run test bench compare sysdeps install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77" wheel

$(STAMP): $(BIN)/python $(SOURCES)
	RADCORE_REQUIRE_EXTENSIONS=1 $(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

install: $(STAMP)

sysdeps:
	scripts/install-system-deps.sh

run: install
	$(BIN)/radcore serve --config $(CONFIG) --demo

test: sysdeps install
	RADCORE_REQUIRE_EXTENSIONS=1 RADCORE_REQUIRE_INTEROP=1 RADCORE_REQUIRE_BROWSER=1 \
		$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m pytest bench --benchmark-disable -q -p no:cacheprovider

bench: sysdeps install
	$(BIN)/python -m pytest bench $(PYTEST_ARGS)

compare: sysdeps install
	command -v freeradius >/dev/null || scripts/install-system-deps.sh freeradius
	bench/compare $(COMPARE_ARGS)

clean:
	rm -rf build *.egg-info radcore/_fastpath.c radcore/*.so control/_proto var .pytest_cache
