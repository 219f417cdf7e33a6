// Command execgate-kernels runs the kernel matrix (test/kernels/matrix):
// each Debian kernel booted under qemu runs the enforcer suite and the
// agent's BPF tests. It exits non-zero when any row fails.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/execgate/execgate/test/kernels"
)

func main() {
	var cfg kernels.Config
	var rows, results, readme string
	flag.StringVar(&cfg.Repo, "repo", ".", "repository root")
	flag.StringVar(&cfg.Matrix, "matrix", "test/kernels/matrix", "matrix file")
	flag.StringVar(&cfg.BuildDir, "build", ".build/kernels", "cache and output directory")
	flag.StringVar(&rows, "rows", "", "comma-separated row names (default: every row)")
	flag.BoolVar(&cfg.CI, "ci", false, "run each row's CI subset of the enforcer suite")
	flag.IntVar(&cfg.Parallel, "parallel", 2, "VMs at once")
	flag.IntVar(&cfg.CPUs, "cpus", 2, "vCPUs per VM")
	flag.DurationVar(&cfg.Timeout, "timeout", 45*time.Minute, "per-row limit")
	flag.StringVar(&results, "results", "", "also merge the results into this file (make kernels: test/kernels/results.json)")
	flag.StringVar(&readme, "readme", "", "regenerate the kernel table in this README from -results")
	readmeOnly := flag.Bool("readme-only", false, "run no row: only regenerate -readme's table from -results")
	var bench kernels.Bench
	var benchArgs string
	flag.StringVar(&bench.Out, "bench-out", "", "instead of the tests, run execgate-bench in the one row of -rows and write its results here")
	flag.StringVar(&benchArgs, "bench-args", "", "execgate-bench flags for -bench-out (sizes)")
	flag.Parse()
	if bench.Out != "" {
		bench.Row, bench.Args = rows, strings.Fields(benchArgs)
		rows = ""
	}
	if rows != "" {
		cfg.Rows = strings.Split(rows, ",")
	}
	cfg.Log = log.New(os.Stderr, "kernels: ", log.Ltime).Printf
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	if *readmeOnly {
		if results == "" || readme == "" {
			fmt.Fprintln(os.Stderr, "kernels: -readme-only needs -results and -readme")
			os.Exit(2)
		}
		var all []kernels.Result
		if all, err = kernels.LoadResults(results); err == nil {
			err = kernels.UpdateReadme(readme, all)
		}
	} else if bench.Out != "" {
		err = kernels.RunBench(ctx, cfg, bench)
	} else {
		err = run(ctx, cfg, results, readme)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernels:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg kernels.Config, results, readme string) error {
	res, runErr := kernels.Run(ctx, cfg)
	fmt.Print(kernels.Table(res))
	if results != "" && len(res) > 0 {
		if err := kernels.SaveResults(results, res); err != nil {
			return err
		}
		if readme != "" {
			all, err := kernels.LoadResults(results)
			if err != nil {
				return err
			}
			if err := kernels.UpdateReadme(readme, all); err != nil {
				return err
			}
		}
	}
	return runErr
}
