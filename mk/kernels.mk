# The kernel matrix (test/kernels/matrix): every Debian kernel row booted
# under qemu (software emulation) runs the enforcer suite and the agent's
# BPF tests. Packages are fetched through a private apt configuration and
# cached in $(KERNELS_BUILD) between runs.
KERNELS_BUILD ?= $(CURDIR)/.build/kernels
# Two VMs at once on the 2-core machine: the suite waits on execs more than
# it computes, so the pair finishes sooner than one after the other.
KERNELS_PARALLEL ?= 2
KERNELS_ROWS ?=
KERNELS_RUN := $(GO) run ./test/kernels/cmd/execgate-kernels -build $(KERNELS_BUILD) -parallel $(KERNELS_PARALLEL) \
	$(if $(KERNELS_ROWS),-rows $(KERNELS_ROWS))

.PHONY: kernels kernels-ci
# The whole suite on every row; records test/kernels/results.json and
# regenerates the README's kernel table from it.
kernels: deps ## whole suite on every kernel of test/kernels/matrix (qemu); updates README table
	$(KERNELS_RUN) -results test/kernels/results.json -readme README.md

# What `make test` runs: each row's CI subset (the matrix's last column).
kernels-ci: deps ## each matrix row's CI subset (what make test runs)
	$(KERNELS_RUN) -ci

# The node benchmarks inside the 6.12 row's VM, the one place the lsm and
# fmod_ret programs can be timed (this machine's kernel refuses trampolines).
# Under software emulation only the ratios carry: each mode against the
# no-program baseline and against exec_kill, timed in the same VM run.
BENCH_VM_ROW ?= 6.12
# Only the modes this machine cannot time itself, plus exec_kill for the
# ratio, at the four sizes issue 13 asks for (the whole run takes minutes).
BENCH_VM_ARGS ?= -modes exec_kill,fmod_ret,lsm -policies 1,100,1000,10000 -peer-policies 1,38 -samples 400 -kernel-samples 200
.PHONY: bench-vm
bench-vm: deps ## node benchmarks inside the 6.12 VM (lsm, fmod_ret timings)
	$(GO) run ./test/kernels/cmd/execgate-kernels -build $(KERNELS_BUILD) -rows $(BENCH_VM_ROW) -timeout 90m \
		-bench-out benchmarks/results/vm-$(BENCH_VM_ROW) -bench-args "$(BENCH_VM_ARGS)"
