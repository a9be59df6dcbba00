# kinfer: the commands README gives. Each is a thin wrapper around a script.
.PHONY: test unit tools cluster-up cluster-down fmt demo demo-down gateway-pgo

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

## Local simulated GPU cluster + kinfer + examples; OpenAI endpoint on http://127.0.0.1:8080/v1.
demo:
	bash e2e/demo.sh up

demo-down:
	bash e2e/demo.sh down

## Optional: the gateway's profile-guided build (not in test or the image); prints its path.
gateway-pgo:
	bash gateway/pgo/build.sh
