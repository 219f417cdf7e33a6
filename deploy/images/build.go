package images

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"sigs.k8s.io/yaml"
)

// ChartDir is the chart whose values name the image, relative to the module.
const ChartDir = "deploy/helm/execgate"

// Licenses is the SPDX expression of what the image holds: the Go code is Apache-2.0; the
// kernel program embedded in the agent is GPL-2.0 (the kernel requires a GPL-compatible
// license for the helpers it calls).
const Licenses = "Apache-2.0 AND GPL-2.0-only"

// Source is the project's repository, as the chart's Chart.yaml names it.
const Source = "https://github.com/execgate/execgate"

// BuildConfig is what `make images` asks for; empty fields take the chart's values.
type BuildConfig struct {
	ModuleDir  string
	BuildDir   string
	Repository string
	Version    string
	// Platforms is comma-separated, "linux/amd64,linux/arm64".
	Platforms string
}

// Result is what was built.
type Result struct {
	Ref       string
	Tarball   string
	Digest    v1.Hash
	Manifests map[string]v1.Hash
	Meta      Meta
}

// Summary is the build's report for a person.
func (r *Result) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "image   %s\nindex   %s\ntarball %s\nrev     %s (created %s)\n", r.Ref, r.Digest, r.Tarball, r.Meta.Revision, r.Meta.Created.UTC().Format(time.RFC3339))
	for _, p := range slices.Sorted(maps.Keys(r.Manifests)) {
		fmt.Fprintf(&b, "  %-12s %s\n", p, r.Manifests[p])
	}
	fmt.Fprintf(&b, "load it: ctr -n k8s.io images import %s\n", r.Tarball)
	return b.String()
}

// Build compiles the binaries of every platform and writes the index as an OCI layout tarball
// in cfg.BuildDir.
func Build(ctx context.Context, cfg BuildConfig) (*Result, error) {
	chart, err := ReadChart(filepath.Join(cfg.ModuleDir, ChartDir))
	if err != nil {
		return nil, err
	}
	if cfg.Repository == "" {
		cfg.Repository = chart.Repository
	}
	if cfg.Version == "" {
		cfg.Version = chart.AppVersion
	}
	platforms, err := ParsePlatforms(cfg.Platforms)
	if err != nil {
		return nil, err
	}
	rev, created, err := gitRevision(ctx, cfg.ModuleDir)
	if err != nil {
		return nil, err
	}
	meta := Meta{
		Name: cfg.Repository + ":" + cfg.Version, Version: cfg.Version, Revision: rev,
		Source: Source, Licenses: Licenses, Created: created,
	}
	buildDir, err := filepath.Abs(cfg.BuildDir)
	if err != nil {
		return nil, err
	}
	var inputs []Platform
	for _, p := range platforms {
		bins, err := Compile(ctx, cfg.ModuleDir, filepath.Join(buildDir, p.OS+"-"+p.Architecture), p, cfg.Version)
		if err != nil {
			return nil, err
		}
		inputs = append(inputs, Platform{Platform: p, Files: ImageFiles(cfg.ModuleDir, bins)})
	}
	idx, err := Index(meta, inputs)
	if err != nil {
		return nil, err
	}
	digest, err := idx.Digest()
	if err != nil {
		return nil, err
	}
	out := filepath.Join(buildDir, "execgate-"+cfg.Version+".oci.tar")
	if err := WriteLayoutTar(out, idx, meta.Name, cfg.Version, created); err != nil {
		return nil, err
	}
	res := &Result{Ref: meta.Name, Tarball: out, Digest: digest, Manifests: map[string]v1.Hash{}, Meta: meta}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		res.Manifests[d.Platform.String()] = d.Digest
	}
	return res, nil
}

// ImageFiles is every file of the image: the base files, the binaries and the license texts
// (the Dockerfile lays out the same paths; a test checks it).
func ImageFiles(moduleDir string, bins []File) []File {
	files := append(BaseFiles(), bins...)
	for _, lic := range []struct{ src, dst string }{{"LICENSE", "LICENSE"}, {"LICENSES/GPL-2.0", "GPL-2.0"}} {
		files = append(files, File{Path: "/usr/share/doc/execgate/" + lic.dst, Mode: 0o644, Source: filepath.Join(moduleDir, lic.src)})
	}
	return files
}

// Chart is what the image build reads from the chart.
type Chart struct {
	AppVersion string
	Repository string
}

// ReadChart reads the chart's appVersion and default image repository: the image built is the
// one `helm install` with default values asks for.
func ReadChart(dir string) (Chart, error) {
	var meta struct {
		AppVersion string `json:"appVersion"`
	}
	var values struct {
		Image struct {
			Repository string `json:"repository"`
		} `json:"image"`
	}
	for _, f := range []struct {
		name string
		into any
	}{{"Chart.yaml", &meta}, {"values.yaml", &values}} {
		raw, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return Chart{}, fmt.Errorf("read chart: %w", err)
		}
		if err := yaml.Unmarshal(raw, f.into); err != nil {
			return Chart{}, fmt.Errorf("parse %s: %w", filepath.Join(dir, f.name), err)
		}
	}
	c := Chart{AppVersion: meta.AppVersion, Repository: values.Image.Repository}
	if c.AppVersion == "" || c.Repository == "" {
		return Chart{}, fmt.Errorf("chart %s: appVersion %q and image.repository %q must both be set", dir, c.AppVersion, c.Repository)
	}
	return c, nil
}

// ParsePlatforms parses "linux/amd64,linux/arm64".
func ParsePlatforms(s string) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := v1.ParsePlatform(f)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", f, err)
		}
		if err := supported(*p); err != nil {
			return nil, err
		}
		out = append(out, *p)
	}
	if len(out) == 0 {
		return nil, errors.New("no platform given")
	}
	return out, nil
}

// gitRevision returns HEAD's commit ("-dirty" when the work tree has changes, as the binaries
// record it) and its commit time, or SOURCE_DATE_EPOCH when set.
func gitRevision(ctx context.Context, dir string) (string, time.Time, error) {
	git := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...).Output()
		if err != nil {
			return "", fmt.Errorf("git %s in %s: %w", strings.Join(args, " "), dir, err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	rev, err := git("rev-parse", "HEAD")
	if err != nil {
		return "", time.Time{}, err
	}
	status, err := git("status", "--porcelain", "--untracked-files=no")
	if err != nil {
		return "", time.Time{}, err
	}
	if status != "" {
		rev += "-dirty"
	}
	epoch := os.Getenv("SOURCE_DATE_EPOCH")
	if epoch == "" {
		if epoch, err = git("log", "-1", "--format=%ct"); err != nil {
			return "", time.Time{}, err
		}
	}
	sec, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("commit time %q: %w", epoch, err)
	}
	return rev, time.Unix(sec, 0).UTC(), nil
}
