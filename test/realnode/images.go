package realnode

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image references the node's containerd knows after boot. "localhost" is a
// registry name nothing resolves here: a pull would fail, so a pod that runs
// proves the image was the imported one.
const (
	PauseImage = "localhost/execgate/pause:1"
	TestImage  = "localhost/execgate/test:1"
)

// imageFile is one entry of an image's single layer: a regular file copied
// from Src, or a symlink to Link.
type imageFile struct {
	Path string // inside the image, without a leading slash
	Src  string
	Link string
	Mode int64
}

// writeImage writes a one-layer linux/amd64 image as a docker archive tarball
// (what `ctr images import` reads) tagged ref.
func writeImage(out, ref string, files []imageFile, entrypoint []string) error {
	layer, err := layerOf(files)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Entrypoint: entrypoint, Env: []string{"PATH=/bin"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(out, tag, img)
}

// layerOf tars files with their parent directories, in a fixed order and with
// fixed times.
func layerOf(files []imageFile) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b imageFile) int {
		if a.Path < b.Path {
			return -1
		}
		if a.Path > b.Path {
			return 1
		}
		return 0
	})
	for _, f := range sorted {
		var parents []string
		for d := path.Dir(f.Path); d != "." && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		slices.Reverse(parents)
		for _, d := range parents {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, err
			}
		}
		if f.Link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.Path, Linkname: f.Link, Mode: 0o777, ModTime: epoch}); err != nil {
				return nil, err
			}
			continue
		}
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path, Mode: f.Mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
}

// busyboxApplets are linked to busybox in the test image.
var busyboxApplets = []string{"sh", "sleep", "cat", "echo", "ls", "true", "false", "cp", "chmod", "wget"}

// testImageFiles: busybox and its applets, and /bin/id as a copy of busybox: an
// allowlist names the file an exec resolves to, so a policy allowing
// /bin/busybox allows every linked applet and still refuses /bin/id.
func testImageFiles(busybox string) []imageFile {
	files := []imageFile{{Path: "bin/busybox", Src: busybox, Mode: 0o755}, {Path: "bin/id", Src: busybox, Mode: 0o755}}
	for _, a := range busyboxApplets {
		files = append(files, imageFile{Path: "bin/" + a, Link: "busybox"})
	}
	return append(files, imageFile{Path: "tmp/.keep", Src: os.DevNull, Mode: 0o644})
}
