# The two commands a newcomer needs: `make up` runs the suite, `make test` tests it.
# Both install what they need first (uv from PyPI, then the locked workspace).

PYTHON ?= python3
UV := $(PYTHON) -m uv
export UV_PYTHON_DOWNLOADS := never
# Tests and local runs never need network access beyond the package index.
PYTEST_ARGS ?=
# The suite waits on servers and processes more than it computes: three workers
# (pytest-xdist) on two cores, each test file kept on one worker (its module-scoped servers),
# fit it in CI's 10 minutes (two took 10:15 at 2,036 tests). PYTEST_WORKERS=0 runs it in this
# process, one test at a time.
PYTEST_WORKERS ?= 3
# The tests run the code that ships: the compiled build, refused when stale (URR_NATIVE=1; the
# tests marked `interpreted` run again in a child with URR_NATIVE=0). PYTEST_NATIVE=0: all
# interpreted.
PYTEST_NATIVE ?= 1

SRC_PACKAGES := $(foreach d,$(wildcard libs/*/src/* services/*/src/* tools/*/src/* loadtests/src/*),-p $(notdir $(d)))
TEST_DIRS := $(sort $(dir $(wildcard libs/*/tests/*.py services/*/tests/*.py tools/*/tests/*.py loadtests/tests/*.py)))
# make loadtest LOADTEST_ARGS="gateway --users 40 --run-time 30"; no options: the flash crowd.
LOADTEST_ARGS ?=

.PHONY: up test lint types pytest sync uv system-deps loadtest dynalite

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv

# Debian's chromium drives the browser tests (Playwright cannot download browsers here);
# fonts-nanum gives it Korean glyphs (the waiting and event pages speak Korean and English).
# Debian's prometheus and prometheus-alertmanager run the alert rules against the local stack
# (URR_DEVSTACK__MONITORING__ENABLED=true) and check the Alertmanager configuration (amtool).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@fc-list 2>/dev/null | grep -qi nanum || { \
		echo "installing Debian's fonts-nanum (Korean glyphs in the pages' screenshots)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq fonts-nanum >/dev/null; }
	@{ command -v prometheus && command -v prometheus-alertmanager && command -v amtool; } \
		>/dev/null 2>&1 || { \
		echo "installing Debian's prometheus and prometheus-alertmanager (alerts, amtool)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			prometheus prometheus-alertmanager >/dev/null; }

# Bytecode compiled at install (--compile-bytecode; later syncs skip what is compiled): with
# PYTHONDONTWRITEBYTECODE=1, as on the CI host, no interpreter ever writes a .pyc, and each
# test process and each service a test starts compiled every module it imports again (a
# gateway interpreter: 2.5 s of CPU to import instead of 1.0 s).
# Then the gateway's request path compiled with mypyc (urr_common.native; ~80 s of gcc, and only
# when a compiled module's source changed): a build that no longer matches its sources is
# never loaded, and URR_NATIVE=0 runs everything interpreted.
sync: uv
	$(UV) sync --frozen --all-packages --compile-bytecode
	$(UV) run --frozen python -m urr_common.native.build

# DynamoDB runs on dynalite, installed first (`make dynalite`); without npm the stack keeps
# DynamoDB on moto (URR_DEVSTACK__DYNAMODB=moto) and says so.
WITH_DYNAMODB_STANDIN = if command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory dynalite >/dev/null || exit 1; \
	else \
		echo "npm not found: DynamoDB runs on moto (install Node.js 20 for dynalite)"; \
		export URR_DEVSTACK__DYNAMODB=moto; \
	fi

# MONITORING=1 also runs Prometheus (the k8s alert rules) and Alertmanager on the stack.
MONITORING ?=
up: sync $(if $(MONITORING),system-deps)
	@$(WITH_DYNAMODB_STANDIN); \
	$(if $(MONITORING),URR_DEVSTACK__MONITORING__ENABLED=true) $(UV) run --frozen urr-devstack up

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

types: sync
	$(UV) run --frozen mypy $(SRC_PACKAGES)
	@for d in $(TEST_DIRS); do \
		echo "mypy (tests) $$d"; \
		$(UV) run --frozen mypy --allow-untyped-defs --allow-incomplete-defs --check-untyped-defs $$d || exit 1; \
	done

# pytest exits 5 when it collects nothing: that fails here like any other non-zero exit.
# dynalite too: the tests' DynamoDB (the fixtures fail, saying how to install it, without it).
pytest: sync system-deps dynalite
	$(UV) run --frozen python -m compileall -q -j 0 $(wildcard libs/*/src services/*/src tools/*/src loadtests/src)
	URR_NATIVE=$(PYTEST_NATIVE) $(UV) run --frozen pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

test: lint types pytest

# Starts the stack when none runs; writes artifacts/loadtests/<scenario>-<time>/; exits 1 on a
# missed target.
loadtest: sync
	@$(WITH_DYNAMODB_STANDIN); \
	$(UV) run --frozen python -m urr_loadtests $(LOADTEST_ARGS)

# dynalite, the local stack's and the tests' DynamoDB (docs/performance.md, "DynamoDB
# stand-in"), into a project-local node_modules from its lockfile, again only when the lockfile
# changed. Needs Node.js 20 and npm.
DYNALITE_STAMP := tools/devstack/dynalite/node_modules/.urr-installed
dynalite: $(DYNALITE_STAMP)
$(DYNALITE_STAMP): tools/devstack/dynalite/package-lock.json
	cd tools/devstack/dynalite && npm ci --no-audit --no-fund
	@touch $@
