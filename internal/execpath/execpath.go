// Package execpath is the one definition of an allowlist entry: the syntax the CRD
// (api/v1alpha1), the agent's gRPC edge (nodeagent/server) and the kernel loader
// (nodeagent/enforcer) all check, so that an entry one of them accepts is never refused
// by the next.
//
// An entry is either an exact path ("/usr/bin/id") or a directory prefix rule, which
// ends in "/" ("/opt/app/") and allows every file below that directory. Both are
// compared byte for byte with the path the kernel resolves, so they must be written the
// way the kernel reports them: absolute, no "." or ".." segment, no "//".
//
// It must not import anything outside the standard library: api/v1alpha1 imports it,
// and api/ imports only apimachinery.
package execpath

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	// MaxLen is the longest entry, in bytes: PATH_MAX without its NUL.
	MaxLen = 4095
	// MaxPrefixLen is the longest prefix rule, in bytes, its trailing "/" included: the
	// key size of the kernel's prefix-match map.
	MaxPrefixLen = 252
)

// dynamicLoaders are the base names of glibc's and musl's dynamic loaders. Executing one
// directly ("ld.so /any/file") maps and runs a file that is never itself exec'd, so the
// kernel checks only the loader: listing it would allow everything. Programs never need
// it listed: the kernel loads a program's interpreter (PT_INTERP) without an exec check.
var dynamicLoaders = []string{
	"ld.so", "ld.so.1", "ld64.so.1", "ld64.so.2",
	"ld-linux.so.2", "ld-linux.so.3", "ld-linux-x86-64.so.2", "ld-linux-x32.so.2",
	"ld-linux-aarch64.so.1", "ld-linux-aarch64_be.so.1", "ld-linux-armhf.so.3",
	"ld-linux-riscv64-lp64d.so.1", "ld-linux-loongarch-lp64d.so.1",
	"ld-musl-x86_64.so.1", "ld-musl-i386.so.1", "ld-musl-aarch64.so.1", "ld-musl-armhf.so.1",
	"ld-musl-arm.so.1", "ld-musl-ppc64le.so.1", "ld-musl-s390x.so.1", "ld-musl-riscv64.so.1",
}

// loaderDirs are the directories that hold a dynamic loader on Debian, Ubuntu, Fedora,
// RHEL and Alpine (amd64, arm64, i386, armhf), and their ancestors: a prefix rule on one
// of them allows the loader, hence everything.
var loaderDirs = []string{
	"/usr/", "/lib/", "/lib64/", "/lib32/", "/libx32/",
	"/usr/lib/", "/usr/lib64/", "/usr/lib32/", "/usr/libx32/",
	"/lib/x86_64-linux-gnu/", "/usr/lib/x86_64-linux-gnu/",
	"/lib/aarch64-linux-gnu/", "/usr/lib/aarch64-linux-gnu/",
	"/lib/i386-linux-gnu/", "/usr/lib/i386-linux-gnu/",
	"/lib/arm-linux-gnueabihf/", "/usr/lib/arm-linux-gnueabihf/",
}

// DynamicLoaders returns the base names of the dynamic loaders an exact entry may not
// name. The CRD's CEL rules list the same names (api/v1alpha1 tests compare them).
func DynamicLoaders() []string { return slices.Clone(dynamicLoaders) }

// LoaderDirs returns the prefix rules refused because they cover a dynamic loader.
func LoaderDirs() []string { return slices.Clone(loaderDirs) }

// IsPrefix reports whether entry is a directory prefix rule (ends in "/").
func IsPrefix(entry string) bool { return strings.HasSuffix(entry, "/") }

// Error is an invalid entry and what is wrong with it.
type Error struct {
	Path    string
	Problem string // phrased to follow the quoted path: "is empty; ..."
}

func (e *Error) Error() string { return Quote(e.Path) + " " + e.Problem }

// Check returns nil if entry is a valid exact path or prefix rule, else an *Error that
// says what to fix.
func Check(entry string) error {
	if p := Problem(entry); p != "" {
		return &Error{Path: entry, Problem: p}
	}
	return nil
}

// Problem returns what is wrong with entry, phrased to follow the quoted entry in a
// message, or "" when it is valid. Callers that report a field path use it directly.
func Problem(entry string) string {
	prefix := IsPrefix(entry)
	switch {
	case entry == "":
		return "is empty; write an absolute path such as /usr/bin/id"
	case strings.IndexByte(entry, 0) >= 0:
		return "contains a NUL byte; the kernel never executes such a path"
	case !utf8.ValidString(entry):
		// JSON and protobuf strings are UTF-8: such a name could never be listed intact.
		return "is not valid UTF-8; policies carry UTF-8 text, so a file with this name cannot be listed (rename the file)"
	case entry[0] != '/':
		return "is not an absolute path; start it with \"/\""
	case entry == "/":
		return "would allow every file: a \"/\" prefix rule matches everything; list directories such as /usr/bin/ instead"
	case len(entry) > MaxLen:
		return fmt.Sprintf("is %d bytes long; the kernel executes paths of at most %d bytes", len(entry), MaxLen)
	case prefix && len(entry) > MaxPrefixLen:
		return fmt.Sprintf("is a directory prefix rule (ends in \"/\") of %d bytes; prefix rules are limited to %d bytes by the kernel's prefix-match map, list the executables one by one instead", len(entry), MaxPrefixLen)
	case strings.Contains(entry, "//"):
		return "contains \"//\"; write the path with single slashes, as the kernel reports it"
	case hasDotSegment(entry):
		return "contains a \".\" or \"..\" segment; write the resolved path, as the kernel executes it"
	case !prefix && slices.Contains(dynamicLoaders, base(entry)):
		return "is a dynamic loader: \"" + base(entry) + " /any/file\" runs any readable file without an exec of that file, so allowing the loader allows everything; programs do not need it listed (the kernel loads it for them)"
	case prefix && slices.Contains(loaderDirs, entry):
		return "is a directory that holds the dynamic loader (ld.so) on common distributions: \"ld.so /any/file\" would run any readable file; list narrower directories or the executables themselves"
	}
	return ""
}

func base(entry string) string { return entry[strings.LastIndexByte(entry, '/')+1:] }

// hasDotSegment reports a "." or ".." segment. The entry starts with "/", so such a
// segment is always preceded by "/" and followed by "/" or the end.
func hasDotSegment(entry string) bool {
	return strings.Contains(entry, "/./") || strings.HasSuffix(entry, "/.") ||
		strings.Contains(entry, "/../") || strings.HasSuffix(entry, "/..")
}

// maxQuoted bounds how much of an entry a message repeats: a 4 KiB path should say what
// is wrong with it, not fill a status message.
const maxQuoted = 80

// Quote quotes entry for a message, cut to its first 80 bytes (at a character boundary)
// and followed by "..." when longer.
func Quote(entry string) string {
	if len(entry) <= maxQuoted {
		return strconv.Quote(entry)
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(entry[cut]) {
		cut--
	}
	return strconv.Quote(entry[:cut]) + "..."
}
