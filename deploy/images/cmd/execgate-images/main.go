// Command execgate-images builds execgate's image for every platform asked (`make images`):
// it cross-compiles the controller and the agent, assembles one OCI index and writes it as an
// OCI layout tarball, named after the chart's appVersion unless told otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/execgate/execgate/deploy/images"
)

func main() {
	var cfg images.BuildConfig
	flag.StringVar(&cfg.ModuleDir, "module", ".", "the execgate module (a git checkout)")
	flag.StringVar(&cfg.BuildDir, "build", ".build/images", "where binaries and the tarball are written")
	flag.StringVar(&cfg.Repository, "repository", "", "image repository (default: the chart's image.repository)")
	flag.StringVar(&cfg.Version, "version", "", "release and tag (default: the chart's appVersion)")
	flag.StringVar(&cfg.Platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated platforms of the index")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := images.Build(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "execgate-images:", err)
		os.Exit(1)
	}
	fmt.Print(res.Summary())
}
