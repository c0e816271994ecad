# The one test command: `make test`. It installs what the tests need (Debian packages and the
# Kubernetes control-plane binaries, cached per user), then runs format, lint and tests.
SHELL := /bin/bash
# A recipe line that fails stops its recipe, pipes included; prerequisites run in the order
# written, also under `make -j`.
.SHELLFLAGS := -eu -o pipefail -c
.NOTPARALLEL:
CARGO ?= cargo

# Compiled dependencies are the expensive part of a fresh clone (minutes on 2 cores), so they
# live in a per-user cache shared by every checkout, like the control-plane binaries. Set
# CARGO_TARGET_DIR to use another folder (for example ./target).
CACHE_HOME := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)
export CARGO_TARGET_DIR ?= $(CACHE_HOME)/trust-rotation-operator/cargo-target

.PHONY: test deps control-plane own-target fmt-check clippy cargo-test generate demo bench-rotation
.PHONY: locked-test locked-demo locked-bench-rotation locked-generate

# Checkouts share that folder, and one checkout's build of this crate must not run as another's
# (see own-target): `test`, `demo`, `bench-rotation` and `generate` each hold a lock on it for
# their whole run, so two checkouts take turns rather than build over each other.
# flock holds the lock itself and closes it for the sub-make (-o), so nothing the run starts
# can keep it once the run is over.
LOCK = $(CARGO_TARGET_DIR)/.make.lock
define locked
mkdir -p "$(CARGO_TARGET_DIR)"; \
flock -n "$(LOCK)" true || echo "waiting for another checkout's make (lock $(LOCK))"; \
flock -o "$(LOCK)" $(MAKE) --no-print-directory locked-$(1)
endef

# `+`: a recursive make, run under -n too and handed the job server.
test:
	@+$(call locked,test)
locked-test: deps own-target fmt-check clippy cargo-test

# Idempotent: a no-op once the cache is warm (or when KUBEBUILDER_ASSETS names other binaries).
deps: control-plane

control-plane:
	@echo "control-plane binaries: checking the cache (the first run builds them: about 10 minutes, progress below)"
	@bash scripts/provision-k8s.sh >/dev/null

# Dependencies may be shared between checkouts, our own crate may not: cargo's freshness check
# compares mtimes and relative paths, so another checkout's build of this crate (with its paths
# baked in by env!) would otherwise pass for fresh here. Rebuild it when the checkout changes.
own-target:
	@mkdir -p "$$CARGO_TARGET_DIR"; owner="$$CARGO_TARGET_DIR/.checkout"; \
	if [ "$$(cat "$$owner" 2>/dev/null)" != "$(CURDIR)" ]; then \
	  $(CARGO) clean --quiet -p trust-rotation-operator; \
	  $(CARGO) clean --quiet -p trust-rotation-operator --release; \
	  echo "$(CURDIR)" > "$$owner"; \
	fi

fmt-check:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

cargo-test:
	$(CARGO) test

# The whole rotation on this machine: `make demo`, or for example
# `make demo DEMO_ARGS="--policies manual --keep"` (see `trust-rotation-operator demo --help`).
DEMO_ARGS ?=
demo:
	@+$(call locked,demo)
locked-demo: deps own-target
	@echo "make demo: building trust-rotation-operator (the first build compiles every dependency: several minutes on 2 cores)"
	@$(CARGO) build --bin trust-rotation-operator
	@"$$CARGO_TARGET_DIR/debug/trust-rotation-operator" demo $(DEMO_ARGS)

# The automatic rotation at 100 and 1,000 simulated pods against plain rollout restarts
# (benches/rotation.rs; BENCH_PODS=100 for one size). A release build.
bench-rotation:
	@+$(call locked,bench-rotation)
locked-bench-rotation: deps own-target
	@echo "make bench-rotation: building the release binaries (the first build takes several minutes)"
	$(CARGO) bench --bench rotation

# Regenerate the committed CRD, webhook configurations and RBAC after changing their source; tests
# fail while the committed copies are stale.
# Each file is replaced only once its new text is whole: a build error leaves it as it was.
OPERATOR = $(CARGO) run --quiet --bin trust-rotation-operator --
generate:
	@+$(call locked,generate)
locked-generate: own-target
	$(CARGO) build --quiet --bin trust-rotation-operator
	$(OPERATOR) crd > charts/trust-rotation-operator-crds/templates/trustanchorrotations.yaml.new
	mv charts/trust-rotation-operator-crds/templates/trustanchorrotations.yaml.new charts/trust-rotation-operator-crds/templates/trustanchorrotations.yaml
	$(OPERATOR) webhook-config > webhook-config/in-cluster.yaml.new
	mv webhook-config/in-cluster.yaml.new webhook-config/in-cluster.yaml
	$(OPERATOR) webhook-config --url https://127.0.0.1:9443/mutate > webhook-config/local.yaml.new
	mv webhook-config/local.yaml.new webhook-config/local.yaml
	$(OPERATOR) rbac > rbac/rbac.yaml.new
	mv rbac/rbac.yaml.new rbac/rbac.yaml
