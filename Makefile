# `make run` and `make test` are all a fresh clone needs: each creates .venv
# when it is missing, installs the project's Python dependencies at the exact
# versions of constraints.txt, and builds the engine (engine/, Rust) into
# zsmalloc._engine with maturin, and the nbdkit plugin (engine/nbdkit) into
# src/zsmalloc/nbd/nbdkit-zsmalloc-plugin.so, where `zsmalloc serve` finds it.
# The engine is rebuilt when its sources change.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ENGINE := $(VENV)/.engine
PLUGIN := src/zsmalloc/nbd/nbdkit-zsmalloc-plugin.so
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
ENGINE_SRC := Cargo.toml Cargo.lock $(wildcard engine/*/Cargo.toml) $(shell find engine -name '*.rs')
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: run test test-rust test-python bench lint clean zstd-library

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) -r constraints.txt
	touch $(STAMP)

$(ENGINE): $(STAMP) $(ENGINE_SRC)
	$(PIP) --no-build-isolation --no-deps -e .
	cargo build --locked --release -p nbdkit-zsmalloc
	cp target/release/libnbdkit_zsmalloc.so $(PLUGIN)
	touch $(ENGINE)

run: $(ENGINE)
	$(VENV)/bin/zsmalloc demo

test: test-rust test-python

# the loom models (engine/core/tests/loom.rs) explore every interleaving of
# their scenarios up to a preemption bound: 2 here (LOOM_MAX_PREEMPTIONS=3 for
# the long form); they build apart, with --cfg loom, in target/loom
test-rust:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo test --locked -p zsmalloc-core
	cargo test --locked -p nbdkit-zsmalloc
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --locked -p zsmalloc-core --release --test loom

test-python: $(ENGINE)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(ENGINE)
	$(PY) benchmarks/run_all.py

# the zstd libraries the kernel presets need beside the bundled one, into
# ~/.cache/zsmalloc-kernel-vm/lib (`zsmalloc zstd-library` says what is used):
# 6.17's, Debian trixie's libzstd1 1.5.7, verified as apt verifies; 6.1's,
# its own lib/zstd built from Debian's linux-source-6.1
zstd-library: $(ENGINE)
	$(VENV)/bin/zsmalloc zstd-library --fetch

lint: $(ENGINE)
	$(PY) -m ruff check .
	$(PY) -m mypy
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

clean:
	rm -rf $(VENV) build dist target .pytest_cache .hypothesis src/zsmalloc/_engine*.so $(PLUGIN)
