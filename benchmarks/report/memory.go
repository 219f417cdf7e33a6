package report

import (
	"fmt"
	"sort"
	"strings"

	"github.com/execgate/execgate/benchmarks/harness"
)

// memoryModel is the node's kernel memory as measured: a fixed part, split
// into what depends on the CPU count and what does not, and a part per
// loaded pod policy.
type memoryModel struct {
	ok           bool
	fixed        float64 // with no policy, on this machine
	perCPU       float64 // per possible CPU, inside fixed
	possibleCPUs int
	perPolicy    float64
	maxPolicies  int
}

func modelOf(res *harness.Results) memoryModel {
	pts := res.Memory.Points
	var zero, last *harness.MemoryPoint
	for i := range pts {
		if pts[i].Policies == 0 {
			zero = &pts[i]
		}
		if last == nil || pts[i].Policies > last.Policies {
			last = &pts[i]
		}
	}
	if zero == nil || last == nil || last.Policies == 0 {
		return memoryModel{}
	}
	return memoryModel{
		ok: true, fixed: float64(zero.Bytes), perCPU: float64(res.Memory.PerCPUBytesPerCPU),
		possibleCPUs: res.Machine.PossibleCPUs,
		perPolicy:    (float64(last.Bytes) - float64(zero.Bytes)) / float64(last.Policies),
		maxPolicies:  last.Policies,
	}
}

// fixedAt projects the fixed cost to a node with cpus possible CPUs.
func (m memoryModel) fixedAt(cpus int) float64 {
	return m.fixed - m.perCPU*float64(m.possibleCPUs) + m.perCPU*float64(cpus)
}

func memoryRows(res *harness.Results) []Row {
	mm := modelOf(res)
	var rows []Row
	for _, p := range res.Memory.Points {
		if p.Policies == 0 {
			var proj []string
			for _, c := range projectedCPUs {
				proj = append(proj, fmt.Sprintf("%d CPUs %s", c, bytes(mm.fixedAt(c))))
			}
			rows = append(rows, Row{
				Item: "3", Measure: fmt.Sprintf("kernel memory per node, 0 pod policies (fixed, %d CPUs)", mm.possibleCPUs),
				Ratio: ratio(float64(p.Bytes)/targetFixedBytes) + " of target",
				Absolute: fmt.Sprintf("%s, of which per-CPU %s × %d; at %s", bytes(float64(p.Bytes)),
					bytes(mm.perCPU), mm.possibleCPUs, strings.Join(proj, ", ")),
				Reference: "per-CPU scratch ~84 KB × CPUs, per policy",
				Target:    "≤ 2 MiB fixed",
				Verdict:   verdict(float64(p.Bytes) <= targetFixedBytes, "top maps: "+topMaps(p, 3)),
			})
			continue
		}
		perPolicy := float64(p.Bytes) - mm.fixed
		if mm.ok {
			perPolicy /= float64(p.Policies)
		}
		row := Row{
			Item: "3", Measure: fmt.Sprintf("kernel memory per node, %s loaded and bound", plural(p.Policies, "pod policy", "pod policies")),
			Ratio:     ratio(perPolicy/tetragonBytesPerPolicy16) + " of Tetragon per policy",
			Absolute:  fmt.Sprintf("%s total, %s per policy (%d bindings)", bytes(float64(p.Bytes)), bytes(perPolicy), p.Bindings),
			Reference: fmt.Sprintf("%.2f MB/policy (16 CPUs) to %.1f MB (96 CPUs); 200 policies: +1.2 GB", tetragonBytesPerPolicy16/1e6, tetragonBytesPerPolicy96/1e6),
			Target:    "≤ 16 KiB per 50-path policy",
		}
		if mm.ok {
			row.Verdict = verdict(perPolicy <= targetBytesPerPolicy, "")
		}
		rows = append(rows, row)
	}
	if peer := largestPeer(res); peer != nil && peer.Policies > 0 {
		per := float64(peer.KernelBytes) / float64(peer.Policies)
		r := Row{
			Item: "3", Measure: fmt.Sprintf("peer rebuild: kernel memory per policy (2 maps + 1 program, %s)", plural(peer.Policies, "policy", "policies")),
			Absolute:  bytes(per),
			Reference: "the rebuild has none of Tetragon's preallocated 32,768-entry maps or per-CPU scratch",
		}
		if mm.ok {
			r.Ratio = ratio(per/mm.perPolicy) + " of execgate per policy"
		}
		rows = append(rows, r)
	}
	return append(rows, clusterRows(res, mm)...)
}

// clusterRows: a cluster of ClusterWorkloads policies where a node runs
// PodsPerNode pods, with bind-time loading and with every policy on every
// node.
func clusterRows(res *harness.Results, mm memoryModel) []Row {
	if !mm.ok {
		return nil
	}
	w, pods := res.Config.ClusterWorkloads, res.Config.PodsPerNode
	cv := clusterOf(res, mm)
	bind, bindHow, every, everyHow := cv.bind, cv.bindHow, cv.every, cv.everyHow
	target := float64(targetFixedBytes) + float64(pods)*targetBytesPerPolicy
	return []Row{
		{
			Item: "3", Measure: fmt.Sprintf("cluster of %s workloads, %d pods per node: bind-time loading (execgate)", count(w), pods),
			Ratio:     ratio(bind/every) + " of every-node loading",
			Absolute:  fmt.Sprintf("%s per node (%s)", bytes(bind), bindHow),
			Reference: fmt.Sprintf("every node loads every policy: %s × %.2f–%.1f MB = %.0f–%.0f GB per node, past the %d-policy filter cap", count(w), tetragonBytesPerPolicy16/1e6, tetragonBytesPerPolicy96/1e6, float64(w)*tetragonBytesPerPolicy16/1e9, float64(w)*tetragonBytesPerPolicy96/1e9, tetragonPolicyFilterCap),
			Target:    fmt.Sprintf("≤ 2 MiB + %d × 16 KiB = %s", pods, bytes(target)),
			Verdict:   verdict(bind <= target, ""),
		},
		{
			Item: "3", Measure: fmt.Sprintf("same cluster if every node loaded every policy (execgate's maps, %s policies)", count(w)),
			Ratio:     ratio(every/(float64(w)*tetragonBytesPerPolicy16)) + " of Tetragon at 16 CPUs",
			Absolute:  fmt.Sprintf("%s per node (%s)", bytes(every), everyHow),
			Reference: fmt.Sprintf("%.0f GB per node at 16 CPUs", float64(w)*tetragonBytesPerPolicy16/1e9),
		},
	}
}

// clusterView is what one node holds: with bind-time loading (its own pods'
// policies) and if it loaded every policy of the cluster.
type clusterView struct {
	bind, every       float64
	bindHow, everyHow string
}

func clusterOf(res *harness.Results, mm memoryModel) clusterView {
	w, pods := res.Config.ClusterWorkloads, res.Config.PodsPerNode
	cv := clusterView{
		bind: mm.fixed + mm.perPolicy*float64(pods), bindHow: "extrapolated",
		every: mm.fixed + mm.perPolicy*float64(w), everyHow: "extrapolated from the per-policy cost",
	}
	for _, p := range res.Memory.Points {
		if p.Policies == pods {
			cv.bind, cv.bindHow = float64(p.Bytes), "measured"
		}
	}
	if le := res.Memory.LargestExec; le.Policies == w {
		cv.every, cv.everyHow = float64(le.Bytes), fmt.Sprintf("measured: %s loaded, maps sized for them", count(w))
	}
	return cv
}

func largestPeer(res *harness.Results) *harness.ExecResult {
	var best *harness.ExecResult
	for i := range res.Exec {
		r := &res.Exec[i]
		if r.Impl == harness.ImplPeer && r.Skipped == "" && (best == nil || r.Policies > best.Policies) {
			best = r
		}
	}
	return best
}

func topMaps(p harness.MemoryPoint, n int) string {
	maps := append(p.Maps[:0:0], p.Maps...)
	sort.Slice(maps, func(i, j int) bool { return maps[i].Bytes > maps[j].Bytes })
	var parts []string
	for i := 0; i < n && i < len(maps); i++ {
		parts = append(parts, fmt.Sprintf("%s %s", maps[i].Name, bytes(float64(maps[i].Bytes))))
	}
	return strings.Join(parts, ", ")
}

func verdict(ok bool, detail string) string {
	v := "not met"
	if ok {
		v = "met"
	}
	if detail != "" {
		v += " (" + detail + ")"
	}
	return v
}

// loadRows: the time to put a policy into the kernel, and to replace one.
func loadRows(res *harness.Results) []Row {
	mem := res.Memory
	var rows []Row
	if mem.LoadPerPolicy.N > 0 {
		rows = append(rows, Row{
			Item: "3", Measure: "load one pod policy on a node (PutPolicy + 2 Binds, 50 paths)",
			Ratio:     ratio(float64(mem.LoadPerPolicy.Median)/(tetragonLoadSecondsPolicy*1e9)) + " of Tetragon",
			Absolute:  fmt.Sprintf("median %s, p99 %s", dur(mem.LoadPerPolicy.Median), dur(mem.LoadPerPolicy.P99)),
			Reference: "~1 s to load one policy",
		})
	}
	if p := largestPeer(res); p != nil {
		rows = append(rows, Row{
			Item: "2", Measure: fmt.Sprintf("peer rebuild: load + attach one policy program (%s)", plural(p.Policies, "policy", "policies")),
			Ratio:     ratio(float64(p.LoadPerPolicy)/(tetragonLoadSecondsPolicy*1e9)) + " of Tetragon",
			Absolute:  "mean " + dur(p.LoadPerPolicy),
			Reference: "~1 s to load one policy",
		})
	}
	if mem.Update.N > 0 {
		rows = append(rows, Row{
			Item: "6", Measure: "allowlist update on one node: new version of a bound policy (atomic swap, RCU grace period, delete old)",
			Ratio:     ratio(float64(mem.Update.Median)/(tetragonLoadSecondsPolicy*1e9)) + " of Tetragon's reload",
			Absolute:  fmt.Sprintf("median %s, p99 %s", dur(mem.Update.Median), dur(mem.Update.P99)),
			Reference: "delete + re-create the policy (~1 s), unprotected meanwhile",
			Target:    "no unprotected window",
			Verdict:   "by construction (enforcer TestAtomicUpdateUnderLoad)",
		})
	}
	return rows
}
