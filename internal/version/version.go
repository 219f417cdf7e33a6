// Package version says which execgate a binary is: the release version stamped at link time
// by `make images` (-X .../internal/version.Version=<chart appVersion>) and the commit the Go
// toolchain records in the binary's build information. It owns nothing else.
package version

import "runtime/debug"

// Version is the release this binary was built as; "dev" for a plain `go build`.
var Version = "dev"

// Revision is the VCS commit the binary was built from, with "-dirty" when the work tree had
// changes, or "unknown" when the build recorded none (go build -buildvcs=false, go run).
func Revision() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && rev != "unknown" {
		rev += "-dirty"
	}
	return rev
}
