package images

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// Annotations on the layout's index.json entry that name the image: the OCI key for tools
// that read the layout (its value is the tag, as the image-spec says) and the key containerd
// (`ctr images import`) and docker's containerd image store read for the full reference.
const (
	annotationRefName        = "org.opencontainers.image.ref.name"
	annotationContainerdName = "io.containerd.image.name"
)

// WriteLayoutTar writes idx as an OCI image layout (oci-layout, index.json, blobs/) in a
// tarball at out, naming it ref ("repository:tag"). The tarball's entries are sorted and
// timed at created, so equal indexes give equal tarballs.
func WriteLayoutTar(out string, idx v1.ImageIndex, ref, tag string, created time.Time) error {
	dir, err := os.MkdirTemp(filepath.Dir(out), ".layout-*")
	if err != nil {
		return fmt.Errorf("layout directory: %w", err)
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		annotationRefName:        tag,
		annotationContainerdName: ref,
	})); err != nil {
		return fmt.Errorf("write index to layout: %w", err)
	}
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := tarTree(f, dir, created); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("tar layout: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// tarTree writes every file under root as writeTar does.
func tarTree(w io.Writer, root string, created time.Time) error {
	entries := map[string]tarEntry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			entries[name+"/"] = tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755}}
		case info.Mode().IsRegular():
			entries[name] = tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: info.Size()}, source: p}
		default:
			return fmt.Errorf("%s: not a file or directory", p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return writeTar(w, entries, created)
}
