# kinfer: the commands README gives. Each is a thin wrapper around a script.
.PHONY: test unit tools cluster-up cluster-down crds fmt

## The whole suite: tools, lint, unit tests, local cluster, e2e (what CI runs).
test:
	bash e2e/run-tests.sh

## Unit and in-process tests only (no cluster).
unit:
	KINFER_SKIP_E2E=1 bash e2e/run-tests.sh

tools:
	bash e2e/tools/install.sh

cluster-up: tools
	bash e2e/cluster.sh up

cluster-down:
	bash e2e/cluster.sh down

fmt:
	cargo fmt --all
