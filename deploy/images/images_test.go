package images

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64"}
)

// staticBinary builds a tiny static Go program for p (the real binaries take minutes; what
// is under test here is the assembly, which treats every binary alike).
func staticBinary(t *testing.T, p v1.Platform) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { println(\"hi\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hi\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "hi")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(withoutBuildEnv(os.Environ()), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+p.Architecture, "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build test binary for %s: %v\n%s", p.String(), err, b)
	}
	return out
}

// copyAt copies src into a new directory with the given mode bits and modification time: the
// build host's file times and umask must not reach the image.
func copyAt(t *testing.T, src string, mode os.FileMode, mtime time.Time) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(dst, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	return dst
}

func testMeta() Meta {
	return Meta{
		Name: "execgate.io/execgate:0.0.0-test", Version: "0.0.0-test", Revision: "0123456789abcdef0123456789abcdef01234567",
		Source: Source, Licenses: Licenses, Created: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
	}
}

func inputs(bins map[string]string) []Platform {
	var out []Platform
	for _, p := range []v1.Platform{amd64, arm64} {
		files := append(BaseFiles(),
			File{Path: BinDir + "/execgate-controller", Mode: 0o755, Source: bins[p.Architecture]},
			File{Path: BinDir + "/execgate-agent", Mode: 0o755, Source: bins[p.Architecture]})
		out = append(out, Platform{Platform: p, Files: files})
	}
	return out
}

func TestIndexIsReproducibleAndComplete(t *testing.T) {
	bins := map[string]string{"amd64": staticBinary(t, amd64), "arm64": staticBinary(t, arm64)}
	// The same bytes at other paths, with other times and modes on the host.
	other := map[string]string{}
	for arch, p := range bins {
		other[arch] = copyAt(t, p, 0o700, time.Now().Add(-time.Hour))
	}
	m := testMeta()
	idx1, err := Index(m, inputs(bins))
	if err != nil {
		t.Fatal(err)
	}
	idx2, err := Index(m, inputs(other))
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := idx1.Digest()
	d2, _ := idx2.Digest()
	if d1 != d2 {
		t.Fatalf("same binaries and metadata gave two index digests: %s and %s", d1, d2)
	}

	dir := t.TempDir()
	tar1, tar2 := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	if err := WriteLayoutTar(tar1, idx1, m.Name, m.Version, m.Created); err != nil {
		t.Fatal(err)
	}
	if err := WriteLayoutTar(tar2, idx2, m.Name, m.Version, m.Created); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(tar1)
	b2, _ := os.ReadFile(tar2)
	if !bytes.Equal(b1, b2) {
		t.Fatal("two writes of the same index gave different tarballs")
	}

	// Read the tarball back as a consumer would: an OCI layout whose one entry is named.
	unpacked := untar(t, tar1)
	lp, err := layout.FromPath(unpacked)
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	topManifest, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(topManifest.Manifests) != 1 {
		t.Fatalf("layout index.json has %d entries, want 1", len(topManifest.Manifests))
	}
	entry := topManifest.Manifests[0]
	if entry.Digest != d1 || entry.Annotations[annotationContainerdName] != m.Name || entry.Annotations[annotationRefName] != m.Version {
		t.Fatalf("layout entry %+v: want digest %s named %s (tag %s)", entry, d1, m.Name, m.Version)
	}
	read, err := top.ImageIndex(d1)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(read); err != nil {
		t.Fatalf("index read back does not validate: %v", err)
	}
	im, err := read.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"org.opencontainers.image.source", "org.opencontainers.image.revision", "org.opencontainers.image.version", "org.opencontainers.image.licenses", "org.opencontainers.image.created"} {
		if im.Annotations[key] == "" {
			t.Errorf("index has no %s annotation", key)
		}
	}
	var platforms []string
	for _, desc := range im.Manifests {
		platforms = append(platforms, desc.Platform.String())
		img, err := read.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != desc.Platform.Architecture || cf.OS != "linux" {
			t.Errorf("%s: config says %s/%s", desc.Platform, cf.OS, cf.Architecture)
		}
		if cf.Config.User != NonRootUser || !strings.HasPrefix(strings.Join(cf.Config.Env, " "), "PATH="+BinDir+":") {
			t.Errorf("%s: user %q env %q, want %s and PATH starting with %s", desc.Platform, cf.Config.User, cf.Config.Env, NonRootUser, BinDir)
		}
		if cf.Config.Labels["org.opencontainers.image.revision"] != m.Revision || !cf.Created.Equal(m.Created) {
			t.Errorf("%s: labels %v created %v", desc.Platform, cf.Config.Labels, cf.Created)
		}
		got := layerListing(t, img)
		want := map[string]string{
			"etc/":                              "dir 755",
			"etc/group":                         "file 644",
			"etc/passwd":                        "file 644",
			"tmp/":                              "dir 1777",
			"usr/":                              "dir 755",
			"usr/local/":                        "dir 755",
			"usr/local/bin/":                    "dir 755",
			"usr/local/bin/execgate-agent":      "file 755",
			"usr/local/bin/execgate-controller": "file 755",
		}
		for name, w := range want {
			if got[name] != w {
				t.Errorf("%s: %s is %q, want %q", desc.Platform, name, got[name], w)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: layer holds %v, want exactly %v", desc.Platform, got, want)
		}
	}
	if strings.Join(platforms, ",") != "linux/amd64,linux/arm64" {
		t.Errorf("index platforms %v, want linux/amd64 and linux/arm64", platforms)
	}
}

func TestIndexRefusesWhatCannotRun(t *testing.T) {
	amdBin := staticBinary(t, amd64)
	dynamic, err := exec.LookPath("git") // dynamically linked on every build host this runs on
	if err != nil {
		t.Fatal(err)
	}
	base := BaseFiles()
	tests := []struct {
		name      string
		meta      func(*Meta)
		platforms []Platform
		want      string
	}{
		{"binary of another architecture", nil, []Platform{{arm64, append(base, File{Path: "/usr/local/bin/execgate-agent", Mode: 0o755, Source: amdBin})}}, "is for EM_X86_64"},
		{"dynamically linked binary", nil, []Platform{{amd64, append(base, File{Path: "/usr/local/bin/git", Mode: 0o755, Source: dynamic})}}, "dynamically linked"},
		{"platform twice", nil, []Platform{{amd64, base}, {amd64, base}}, "given twice"},
		{"file twice", nil, []Platform{{amd64, append(base, base[0])}}, "given twice"},
		{"relative path", nil, []Platform{{amd64, []File{{Path: "etc/passwd", Mode: 0o644}}}}, "clean absolute path"},
		{"path with ..", nil, []Platform{{amd64, []File{{Path: "/etc/../passwd", Mode: 0o644}}}}, "clean absolute path"},
		{"mode beyond permissions", nil, []Platform{{amd64, []File{{Path: "/x", Mode: 0o100755}}}}, "beyond the permissions"},
		{"unsupported platform", nil, []Platform{{v1.Platform{OS: "linux", Architecture: "s390x"}, []File{{Path: "/x", Mode: 0o755, Source: amdBin}}}}, "only linux/amd64 and linux/arm64"},
		{"no creation time", func(m *Meta) { m.Created = time.Time{} }, []Platform{{amd64, base}}, "creation time is zero"},
		{"no platform", nil, nil, "no platform"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := testMeta()
			if tc.meta != nil {
				tc.meta(&m)
			}
			_, err := Index(m, tc.platforms)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Index: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParsePlatforms(t *testing.T) {
	if got, err := ParsePlatforms("linux/amd64, linux/arm64"); err != nil || len(got) != 2 || got[1].Architecture != "arm64" {
		t.Fatalf("ParsePlatforms: %v %v", got, err)
	}
	for _, bad := range []string{"", "windows/amd64", "linux/arm/v7", "linux/arm64/v8"} {
		if _, err := ParsePlatforms(bad); err == nil {
			t.Errorf("ParsePlatforms(%q) accepted", bad)
		}
	}
}

// The image `make images` names is the one the chart asks for by default.
func TestChartNamesTheBuiltImage(t *testing.T) {
	c, err := ReadChart(filepath.Join("..", "helm", "execgate"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Repository != "execgate.io/execgate" || c.AppVersion == "" {
		t.Fatalf("chart %+v: want image.repository execgate.io/execgate and an appVersion", c)
	}
}

// The Dockerfile, for those who build with Docker, lays out the same files.
func TestDockerfileLaysOutTheSameFiles(t *testing.T) {
	df, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var bins []File
	for _, pkg := range Binaries {
		bins = append(bins, File{Path: BinDir + "/" + filepath.Base(pkg), Mode: 0o755})
	}
	for _, f := range ImageFiles("../..", bins) {
		if f.Source != "" && f.Mode&0o111 == 0 {
			if _, err := os.Stat(f.Source); err != nil {
				t.Errorf("image file %s: its source %v", f.Path, err)
			}
		}
		dir, name := filepath.Split(f.Path)
		if !strings.Contains(string(df), "/root-fs"+dir) || !strings.Contains(string(df), name) {
			t.Errorf("Dockerfile does not lay out %s", f.Path)
		}
	}
	for _, want := range []string{"USER " + NonRootUser, "ENV PATH=" + BinDir + ":", "-trimpath", "CGO_ENABLED=0", "chmod 1777 /root-fs/tmp"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

// TestCompileChecksPlatform: Compile refuses a platform before running the toolchain.
func TestCompileChecksPlatform(t *testing.T) {
	if _, err := Compile(context.Background(), ".", t.TempDir(), v1.Platform{OS: "darwin", Architecture: "arm64"}, "x"); err == nil {
		t.Fatal("Compile accepted darwin/arm64")
	}
}

func untar(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// layerListing is "dir 755" / "file 644" per entry of the image's one layer; owners and times
// are checked too (root, the metadata's time).
func layerListing(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(testMeta().Created) {
			t.Errorf("%s: uid %d gid %d time %v, want root and %v", h.Name, h.Uid, h.Gid, h.ModTime, testMeta().Created)
		}
		kind := "file"
		if h.Typeflag == tar.TypeDir {
			kind = "dir"
		}
		out[h.Name] = kind + " " + strconv.FormatInt(h.Mode, 8)
	}
}
