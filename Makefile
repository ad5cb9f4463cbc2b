# Every target creates .venv on first use; `make venv` does only that.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast torture demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
# FUSE for the power-cut tests (tests/_lazyfs.py): Debian's fuse3, if missing.
	command -v fusermount3 >/dev/null || { apt-get install -y -qq fuse3 || \
	  { apt-get update -qq && apt-get install -y -qq fuse3; }; } || \
	  echo "warning: fuse3 not installed; tests/test_power_cut.py cannot mount"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,demo]'
	touch $(STAMP)

# Serial: the signal tests (SIGINT, SIGTERM) need the main thread, and
# pytest-xdist's workers do not always run tests there. For a quicker local
# run: `$(BIN)/python -m pytest -n 2 --dist loadfile` (tallies are summed).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The quick loop: everything but the tests marked slow (child processes, fuzz rounds).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# 200 random-instant SIGKILL rounds (JAXCKPT_CRASH_ROUNDS=N for more) plus the aimed ones,
# 30 multi-process kill rounds (JAXCKPT_MP_CRASH_ROUNDS), the 64-process scale test,
# then >= 1,000 simulated power cuts, then 8x the fuzz inputs; each run's last line counts
# what ran and survived.
torture: $(STAMP)
	JAXCKPT_CRASH_ROUNDS=$${JAXCKPT_CRASH_ROUNDS:-200} \
	JAXCKPT_MP_CRASH_ROUNDS=$${JAXCKPT_MP_CRASH_ROUNDS:-30} JAXCKPT_SCALE_PROCESSES=64 \
	$(BIN)/python -m pytest -q tests/test_crash.py tests/test_multihost_crash.py \
	tests/test_multihost_scale.py
# A simulated power cut after every file-system operation of longer save runs.
	JAXCKPT_POWER_CUTS=all $(BIN)/python -m pytest -q tests/test_power_cut.py
# 8x the fuzz inputs of `make test` (JAXCKPT_FUZZ_SCALE; 0.5 there).
	JAXCKPT_FUZZ_SCALE=$${JAXCKPT_FUZZ_SCALE:-4} $(BIN)/python -m pytest -q tests/test_fuzz.py

demo: $(STAMP)
	$(BIN)/jaxckpt demo

# BENCH_ARGS: e.g. BENCH_ARGS="--workloads W1,W3 --scale 0.1" (see benchmarks/bench.py --help)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
