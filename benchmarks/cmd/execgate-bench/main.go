// Command execgate-bench runs issue 7's node benchmarks on this machine's
// real kernel, then items 4-6 through a real control plane (-control-plane),
// prints one table and writes it as Markdown, JSON and PNG plots. It needs
// root and BPF, and the control-plane binaries of `make tools`. `make bench`
// runs it; -quick checks that it works, with samples too small to quote.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/execgate/execgate/benchmarks/controlplane"
	"github.com/execgate/execgate/benchmarks/harness"
	"github.com/execgate/execgate/benchmarks/report"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

type config struct {
	bench harness.Config
	// controlPlane sizes items 4-6; nil skips them.
	controlPlane *controlplane.Config
	outDir       string
	command      string
	render       string // results.json of an earlier run: render it, measure nothing
}

func main() {
	var (
		cfg   config
		quick bool
	)
	flag.StringVar(&cfg.outDir, "out", "benchmarks/results", "directory for RESULTS.md, results.json and the plots")
	flag.BoolVar(&quick, "quick", false, "small sizes: checks the harness, numbers not worth quoting")
	samples := flag.Int("samples", 0, "timed execs per pod and state (0: the preset's)")
	kernelSamples := flag.Int("kernel-samples", 0, "execs per pod timed with BPF run-time statistics (0: the preset's)")
	flag.StringVar(&cfg.render, "render", "", "re-render the table, RESULTS.md and plots from this results.json; measures nothing")
	modes := flag.String("modes", "", "comma-separated attach modes to time (exec_kill,fanotify,fmod_ret,lsm; default: every mode this kernel loads)")
	policies := flag.String("policies", "", "comma-separated ascending pod-policy counts for execgate's program (default: the preset's)")
	peerPolicies := flag.String("peer-policies", "", "comma-separated ascending program counts for the peer baseline (default: the preset's)")
	withControlPlane := flag.Bool("control-plane", true, "also measure items 4-6 through a real kube-apiserver, kube-scheduler, webhook and agents")
	flag.Parse()

	cfg.bench = harness.DefaultConfig()
	cp := controlplane.DefaultConfig()
	if quick {
		cfg.bench, cp = harness.QuickConfig(), controlplane.QuickConfig()
	}
	if *withControlPlane {
		cp.Progress = os.Stderr
		cfg.controlPlane = &cp
	}
	if *samples > 0 {
		cfg.bench.Samples = *samples
	}
	if *kernelSamples > 0 {
		cfg.bench.KernelSamples = *kernelSamples
	}
	var err error
	if cfg.bench.Modes, err = parseModes(*modes); err == nil {
		err = parseSizes(*policies, &cfg.bench.OurPolicies)
	}
	if err == nil {
		err = parseSizes(*peerPolicies, &cfg.bench.PeerPolicies)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "execgate-bench:", err)
		os.Exit(2)
	}
	cfg.bench.Progress = os.Stderr
	cfg.command = strings.Join(append([]string{"go run ./benchmarks/cmd/execgate-bench"}, os.Args[1:]...), " ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "execgate-bench:", err)
		os.Exit(1)
	}
}

// parseModes reads -modes; the harness's Validate refuses unknown modes.
func parseModes(s string) ([]enforcer.AttachMode, error) {
	if s == "" {
		return nil, nil
	}
	var out []enforcer.AttachMode
	for _, f := range strings.Split(s, ",") {
		m, err := enforcer.ParseAttachMode(strings.TrimSpace(f))
		if err != nil || m == enforcer.AttachAuto {
			return nil, fmt.Errorf("-modes %q: %q is not an attach mode to time (exec_kill, fanotify, fmod_ret, lsm)", s, f)
		}
		out = append(out, m)
	}
	return out, nil
}

// parseSizes reads a comma-separated list of counts into dst; "" keeps dst.
func parseSizes(s string, dst *[]int) error {
	if s == "" {
		return nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("%q is not a list of counts: %w", s, err)
		}
		out = append(out, n)
	}
	*dst = out
	return nil
}

func run(ctx context.Context, cfg config) error {
	if cfg.render != "" {
		res, err := report.ReadResults(cfg.render)
		if err != nil {
			return err
		}
		return report.WriteAll(os.Stdout, cfg.outDir, res, res.Command)
	}
	if cfg.controlPlane != nil {
		cp, err := controlplane.New(*cfg.controlPlane) // before minutes of node benchmarks
		if err != nil {
			return err
		}
		cfg.bench.ControlPlane = cp
	}
	res, err := harness.Run(ctx, cfg.bench)
	if err != nil {
		return err
	}
	res.Command = cfg.command
	return report.WriteAll(os.Stdout, cfg.outDir, res, cfg.command)
}
