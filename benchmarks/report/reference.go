// Package report turns a harness run into issue 7's one table (ratios
// first, absolute numbers second, the seed team's Tetragon figures as the
// reference column, the targets and whether they are met), as text for a
// terminal, as Markdown, and as PNG plots.
//
// It judges numbers; it measures nothing and touches no kernel state.
package report

// The seed team's figures for one-program-per-policy on Tetragon, and the
// product targets, both from shared/CONTEXT.md and issue 7.
const (
	referenceSource = "seed team's Tetragon field notes (shared/CONTEXT.md)"

	// 10,000 runs of `date`: 13.44 s with no policy, 14.38 s with 200.
	tetragonExecNoPolicyNs    = 13.44e9 / 10000
	tetragonExecOverheadNs    = (14.38e9 - 13.44e9) / 10000
	tetragonExecPolicies      = 200
	tetragonBytesPerPolicy16  = 1.48e6 // after upstream fixes, 16 CPUs
	tetragonBytesPerPolicy96  = 8.3e6  // per-CPU scratch ~84 KB x 96 CPUs
	tetragonPolicyFilterCap   = 128
	tetragonLoadSecondsPolicy = 1.0

	targetExecOverheadNs  = 1000
	targetFixedBytes      = 2 << 20
	targetBytesPerPolicy  = 16 << 10
	targetBindToKernelP99 = 10e6 // ns
	targetThroughputRatio = 0.95
	// flatGrowth: the most the per-exec program time may grow from the
	// smallest to the largest policy count and still be called flat.
	flatGrowth = 1.25
)

const referenceNote = "Reference column: " + referenceSource + ": 10,000 runs of `date` took 13.44 s with no policy and 14.38 s with 200 policies; 1.48 MB per policy on 16 CPUs, ~8.3 MB on 96 CPUs; ~1 s to load a policy; every node loads every policy; 38 trampoline links per function, 128 policies in the policy filter."

// Node sizes the per-CPU projection is shown for: a mid-size node, the seed
// team's 96-CPU figure and the largest common cloud node.
var projectedCPUs = []int{16, 96, 384}
