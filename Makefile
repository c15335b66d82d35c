# Quick start: `make run` (the default heterogeneous cluster on the bundled data) and `make test`.
# Both create .venv from requirements.txt first when it is missing or out of date.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The default cluster: two fast workers, one 4x and one 16x slower (emulated slowdown).
WORKERS ?= 4
SLOWDOWNS ?= 1,1,4,16
NETWORK ?= lenet
MAX_TIME ?= 90
LOG_DIR ?= logs

.PHONY: run test test-fast lint bench-state-server reproduce faults soak clean data mutants

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=/path/to/python3.11)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) launch.py --compare esync,sync,local -w $(WORKERS) --slowdowns $(SLOWDOWNS) \
		-n $(NETWORK) --max-time $(MAX_TIME) --rounds 100000 -e 0 --eval-interval 0.5 -ld $(LOG_DIR) \
		--checkpoint-every 10 --max-restarts 2

test: $(STAMP)
	$(PY) -m pytest -q

# The unit layer only (no process, no socket; well under 90 s): tests/unit.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Downloads Fashion-MNIST and CIFAR-10 into data/ and verifies their published MD5s (the only
# target that needs the network; see data/README.md).
data: $(STAMP)
	$(PY) -m data.fetch fashion-mnist
	$(PY) -m data.fetch cifar10

# Mutation check (tests/mutants.py, a few minutes): break the update maths, Alg. 2 and the
# transport one mutant at a time in a scratch copy; the named tests must fail on each.
mutants: $(STAMP)
	$(PY) tests/mutants.py

bench-state-server: $(STAMP)
	$(PY) -m bench.bench_state_server

# The full comparison of docs/reproduction.md: every registered mode on the iid split, then the
# distributed ones on the non-iid split (-s 1; standalone training has no split), ~20 minutes.
COMPARE_FLAGS = -w $(WORKERS) --slowdowns $(SLOWDOWNS) -n $(NETWORK) --max-time 90 \
	--rounds 100000 -e 0 --eval-interval 0.5 -ld $(LOG_DIR)
reproduce: $(STAMP)
	$(PY) launch.py --compare all $(COMPARE_FLAGS)
	$(PY) launch.py --compare distributed $(COMPARE_FLAGS) -s 1
	# devices that swap speed after 30 s (docs/slowdown.md): the fastest becomes 16x slower
	$(PY) launch.py --compare esync,sync,async,fedavg -w $(WORKERS) -n $(NETWORK) --max-time 90 \
		--rounds 100000 -e 0 --eval-interval 0.5 --slowdowns 1/16@30,1,4,16/1@30 \
		-ld $(LOG_DIR)/swap

# The fault matrix (docs/faults.md): {kill -9, SIGSTOP} x {scheduler, server, fast worker,
# slow worker, State Server} x {start-up, mid-run, checkpoint}, one default cluster each (~45 min).
faults: $(STAMP)
	$(PY) -m bench.fault_matrix

# 20 minutes of training with a random kill -9 or SIGSTOP every 60 s (docs/faults.md).
soak: $(STAMP)
	$(PY) -m bench.faults --soak 1200

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
