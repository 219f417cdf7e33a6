# Benchmarks (issue 7). `make bench` runs the node benchmarks on this machine's real
# kernel (root, BPF, cgroup v2): exec overhead with no program, with execgate and 1 to
# 10,000 pod policies, and with the one-program-per-policy peer baseline; kernel memory
# per node; the cluster view; then items 4-6 through a real control plane
# (test/e2e/framework; BENCH_FLAGS=-control-plane=false skips them). It prints one table
# and writes benchmarks/results/ (RESULTS.md, results.json, PNG plots). ~8 minutes on the
# 2-core machine plus the first build; BENCH_FLAGS=-quick checks everything in ~1 minute.
# `make bench-go` runs the Go benchmarks of the hot paths for benchstat:
#   make bench-go > old.txt; (change); make bench-go > new.txt; benchstat old.txt new.txt
BENCH_OUT ?= benchmarks/results
BENCH_FLAGS ?=
BENCH_GO_COUNT ?= 6
BENCH_GO_PKGS := ./webhook/binding ./nodeagent/enforcer

.PHONY: bench bench-go
# Items 4-6 run through the real control plane, hence `tools`.
bench: deps tools ## node and control-plane benchmarks; prints the tables in benchmarks/
	$(GO) run ./benchmarks/cmd/execgate-bench -out $(BENCH_OUT) $(BENCH_FLAGS)

bench-go: deps ## Go benchmarks only
	$(GO) test -run '^$$' -bench . -count $(BENCH_GO_COUNT) $(BENCH_GO_PKGS)


