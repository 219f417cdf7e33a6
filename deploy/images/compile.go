package images

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Binaries are the commands the image holds, by package path inside the module.
var Binaries = []string{"./cmd/execgate-controller", "./cmd/execgate-agent"}

const versionVar = "github.com/execgate/execgate/internal/version.Version"

// Compile builds every Binaries command for p from the module at moduleDir into outDir, as
// static binaries that are the same bytes on any machine for the same commit and toolchain:
// CGO off, -trimpath (no build paths), no GOFLAGS from the caller's environment, the version
// stamped with -X. The Go toolchain records the commit (vcs.revision) itself.
func Compile(ctx context.Context, moduleDir, outDir string, p v1.Platform, version string) ([]File, error) {
	if err := supported(p); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	args := []string{"build", "-trimpath", "-ldflags", "-s -w -X " + versionVar + "=" + version, "-o", outDir + "/"}
	cmd := exec.CommandContext(ctx, "go", append(args, Binaries...)...)
	cmd.Dir = moduleDir
	cmd.Env = append(withoutBuildEnv(os.Environ()), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture, "GOFLAGS=-mod=readonly")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build for %s: %w\n%s", p.String(), err, stderr.String())
	}
	files := make([]File, 0, len(Binaries))
	for _, pkg := range Binaries {
		name := filepath.Base(pkg)
		files = append(files, File{Path: BinDir + "/" + name, Mode: 0o755, Source: filepath.Join(outDir, name)})
	}
	return files, nil
}

// withoutBuildEnv drops the caller's GOFLAGS, CGO_ENABLED, GOOS and GOARCH: Compile sets its own.
func withoutBuildEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "GOFLAGS=") && !strings.HasPrefix(kv, "CGO_ENABLED=") && !strings.HasPrefix(kv, "GOOS=") && !strings.HasPrefix(kv, "GOARCH=") {
			out = append(out, kv)
		}
	}
	return out
}
