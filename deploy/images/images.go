// Package images builds execgate's container image without a container daemon: one image
// holding both static binaries (execgate-controller and execgate-agent, as the chart expects),
// for every platform asked, on an empty base, assembled into one OCI image index and written
// as an OCI image layout tarball that `ctr images import` reads.
//
// The result is reproducible: the same binaries and the same Meta give the same index digest
// on any machine (file times are Meta.Created, owners are root, entries are sorted, nothing
// of the build host enters). The Go binaries themselves are reproducible through -trimpath
// and the toolchain pinned by go.mod (Compile). This package does not push anywhere.
package images

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BinDir is where the binaries live in the image; it is first on the image's PATH, so the
// chart's commands name the binaries alone.
const BinDir = "/usr/local/bin"

// NonRootUser is the image's default user (uid:gid). The controller runs as it; the agent's
// DaemonSet sets runAsUser 0 because loading BPF programs needs capabilities that Kubernetes
// gives only to root.
const NonRootUser = "65532:65532"

// Meta describes the build: it goes into the image config's labels, the manifests' and the
// index's annotations (the OCI annotation keys), and every file's time.
type Meta struct {
	// Name is the image reference the layout tarball carries, for example "execgate.io/execgate:0.1.0".
	Name string
	// Version is the release (the chart's appVersion).
	Version string
	// Revision is the commit the image is built from.
	Revision string
	// Source is the URL of the source repository.
	Source string
	// Licenses is an SPDX expression.
	Licenses string
	// Created is the time written everywhere a time is needed (the commit's time).
	Created time.Time
}

// File is one file of the image's single layer.
type File struct {
	// Path is absolute inside the image.
	Path string
	// Mode holds the permission bits.
	Mode int64
	// Source is the file on the build host whose bytes are copied; empty when Data is used.
	Source string
	// Data is the content when Source is empty.
	Data []byte
}

// Platform is one image of the index: its platform and its files.
type Platform struct {
	Platform v1.Platform
	Files    []File
}

// Validate says what is wrong with m, before anything is built.
func (m Meta) Validate() error {
	var errs []error
	if m.Name == "" {
		errs = append(errs, errors.New("image name is empty"))
	}
	if m.Version == "" {
		errs = append(errs, errors.New("version is empty"))
	}
	if m.Revision == "" {
		errs = append(errs, errors.New("revision is empty"))
	}
	if m.Created.IsZero() {
		errs = append(errs, errors.New("creation time is zero (give the commit's time)"))
	}
	return errors.Join(errs...)
}

func (m Meta) annotations() map[string]string {
	a := map[string]string{
		"org.opencontainers.image.title":       "execgate",
		"org.opencontainers.image.description": "execgate controller (binding webhook) and node agent (eBPF exec enforcer)",
		"org.opencontainers.image.version":     m.Version,
		"org.opencontainers.image.revision":    m.Revision,
		"org.opencontainers.image.created":     m.Created.UTC().Format(time.RFC3339),
	}
	if m.Source != "" {
		a["org.opencontainers.image.source"] = m.Source
	}
	if m.Licenses != "" {
		a["org.opencontainers.image.licenses"] = m.Licenses
	}
	return a
}

// BaseFiles are the files every platform's image holds besides the binaries: the users the
// workloads run as (a scratch image has none, and a non-root runAsUser with no passwd entry
// leaves HOME unset) and an empty /tmp.
func BaseFiles() []File {
	return []File{
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnonroot:x:65532:\n")},
	}
}

// Index assembles the OCI index of every platform. Each binary is checked first: a static
// ELF file of the platform's architecture (an image that cannot run is refused here, not on
// the node).
func Index(m Meta, platforms []Platform) (v1.ImageIndex, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("image metadata: %w", err)
	}
	if len(platforms) == 0 {
		return nil, errors.New("no platform to build")
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	seen := map[string]bool{}
	for _, p := range platforms {
		key := p.Platform.String()
		if err := supported(p.Platform); err != nil {
			return nil, err
		}
		if seen[key] {
			return nil, fmt.Errorf("platform %s given twice", key)
		}
		seen[key] = true
		img, err := image(m, p)
		if err != nil {
			return nil, fmt.Errorf("image for %s: %w", key, err)
		}
		plat := p.Platform
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &plat, Annotations: m.annotations()},
		})
	}
	return mutate.Annotations(idx, m.annotations()).(v1.ImageIndex), nil
}

func image(m Meta, p Platform) (v1.Image, error) {
	for _, f := range p.Files {
		if f.Source != "" && f.Mode&0o111 != 0 {
			if err := checkBinary(f.Source, p.Platform); err != nil {
				return nil, err
			}
		}
	}
	layerTar, err := layerBytes(p.Files, m.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: m.Created}, CreatedBy: "execgate deploy/images", Comment: "execgate binaries " + m.Version},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant, cf.OSVersion = p.Platform.OS, p.Platform.Architecture, p.Platform.Variant, p.Platform.OSVersion
	cf.Created = v1.Time{Time: m.Created}
	cf.Author = "execgate"
	cf.Config = v1.Config{
		Env:        []string{"PATH=" + BinDir + ":/usr/bin:/bin"},
		User:       NonRootUser,
		WorkingDir: "/",
		Labels:     m.annotations(),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return mutate.Annotations(img, m.annotations()).(v1.Image), nil
}

// layerBytes writes the layer's tar: parent directories made explicit, entries sorted by
// path, every time set to created, owner root, so that equal files give equal bytes.
func layerBytes(files []File, created time.Time) ([]byte, error) {
	entries := map[string]tarEntry{}
	addDir := func(dir string, mode int64) {
		for d := dir; d != "/" && d != "."; d = path.Dir(d) {
			name := strings.TrimPrefix(d, "/") + "/"
			if _, ok := entries[name]; !ok {
				entries[name] = tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
			}
		}
	}
	addDir("/tmp", 0o1777) // first: /tmp's own mode is 1777, not the parents' 0755
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("file path %q: want a clean absolute path", f.Path)
		}
		if f.Mode&^0o7777 != 0 {
			return nil, fmt.Errorf("file %s: mode %o has bits beyond the permissions", f.Path, f.Mode)
		}
		data := f.Data
		if f.Source != "" {
			var err error
			if data, err = os.ReadFile(f.Source); err != nil {
				return nil, fmt.Errorf("read %s for %s: %w", f.Source, f.Path, err)
			}
		}
		name := strings.TrimPrefix(f.Path, "/")
		if _, ok := entries[name]; ok {
			return nil, fmt.Errorf("file %s given twice", f.Path)
		}
		addDir(path.Dir(f.Path), 0o755)
		entries[name] = tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: f.Mode, Size: int64(len(data))}, data: data}
	}
	var buf bytes.Buffer
	if err := writeTar(&buf, entries, created); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarEntry is one entry of a tar writeTar writes: its header (type, name, mode, size) and
// its content, in data or read from the file source.
type tarEntry struct {
	hdr    tar.Header
	data   []byte
	source string
}

// writeTar writes entries sorted by name, every time set to created and owner root, so that
// equal entries give equal bytes.
func writeTar(w io.Writer, entries map[string]tarEntry, created time.Time) error {
	tw := tar.NewWriter(w)
	for _, n := range slices.Sorted(maps.Keys(entries)) {
		e := entries[n]
		e.hdr.ModTime = created.UTC().Truncate(time.Second)
		e.hdr.Format = tar.FormatPAX
		e.hdr.Uname, e.hdr.Gname = "root", "root"
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return fmt.Errorf("tar header %s: %w", n, err)
		}
		if e.source != "" {
			f, err := os.Open(e.source)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("tar %s: %w", n, err)
			}
		} else if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("tar %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close tar: %w", err)
	}
	return nil
}

var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
}

// supported refuses a platform the image is not built for.
func supported(p v1.Platform) error {
	if _, ok := elfMachine[p.Architecture]; !ok || p.OS != "linux" || p.Variant != "" {
		return fmt.Errorf("platform %s: only linux/amd64 and linux/arm64 are built", p.String())
	}
	return nil
}

// checkBinary refuses a file that is not a static ELF executable for p: the image has no
// dynamic loader or libc, and a binary of another architecture fails with "exec format error"
// only once a node pulls it.
func checkBinary(file string, p v1.Platform) error {
	if err := supported(p); err != nil {
		return err
	}
	want := elfMachine[p.Architecture]
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("binary %s: %w", file, err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("binary %s is for %s, the image is %s", file, f.Machine, p.String())
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("binary %s is dynamically linked (build with CGO_ENABLED=0): the image has no dynamic loader", file)
		}
	}
	return nil
}
