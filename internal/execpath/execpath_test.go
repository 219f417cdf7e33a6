package execpath

import (
	"errors"
	"path"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCheck(t *testing.T) {
	long := strings.Repeat("a", MaxLen)
	tests := []struct {
		entry string
		want  string // substring of the problem; "" = valid
	}{
		{"/usr/bin/id", ""},
		{"/opt/app/", ""},
		{"/a", ""},
		{"/usr/lib/.hidden/..x/...", ""},
		{"/usr/bin/python3.12", ""},
		{"/opt/ünïcode/日本語", ""},
		{"/opt/app\n/run", ""}, // Linux allows any byte but "/" and NUL in a name
		{"/" + long[:MaxLen-1], ""},
		{"/" + long[:MaxPrefixLen-2] + "/", ""},
		{"/usr/bin/ld-linux-x86-64.so.2.bak", ""},
		{"/usr/bin/", ""},
		{"/usr/local/", ""},

		{"", "is empty"},
		{"usr/bin/id", "is not an absolute path"},
		{"./id", "is not an absolute path"},
		{"/", `would allow every file: a "/" prefix rule matches everything`},
		{"/bin/i\x00d", "contains a NUL byte"},
		{"/bin/\xff", "is not valid UTF-8"},
		{"/" + long, "is 4096 bytes long; the kernel executes paths of at most 4095 bytes"},
		{"/" + long[:MaxPrefixLen-1] + "/", "is a directory prefix rule (ends in \"/\") of 253 bytes; prefix rules are limited to 252 bytes"},
		{"//", `contains "//"`},
		{"//bin/sh", `contains "//"`},
		{"/usr//bin/id", `contains "//"`},
		{"/usr/lib/app//", `contains "//"`},
		{"/usr/./bin/id", `contains a "." or ".." segment`},
		{"/usr/../bin/id", `contains a "." or ".." segment`},
		{"/usr/bin/.", `contains a "." or ".." segment`},
		{"/usr/bin/..", `contains a "." or ".." segment`},
		{"/..", `contains a "." or ".." segment`},
		{"/./", `contains a "." or ".." segment`},
		{"/usr/lib/app/../", `contains a "." or ".." segment`},
		{"/lib64/ld-linux-x86-64.so.2", `is a dynamic loader: "ld-linux-x86-64.so.2 /any/file"`},
		{"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "allows everything"},
		{"/lib/ld-musl-x86_64.so.1", "is a dynamic loader"},
		{"/usr/bin/ld.so", "is a dynamic loader"},
		{"/usr/lib/", "holds the dynamic loader"},
		{"/usr/", "holds the dynamic loader"},
		{"/lib/x86_64-linux-gnu/", "holds the dynamic loader"},
	}
	for _, tt := range tests {
		err := Check(tt.entry)
		if tt.want == "" {
			if err != nil {
				t.Errorf("Check(%q) = %v, want valid", tt.entry, err)
			}
			continue
		}
		var e *Error
		if !errors.As(err, &e) || e.Path != tt.entry || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Check(%q) = %v, want an *Error containing %q", tt.entry, err, tt.want)
		}
	}
}

func TestQuoteBoundsMessages(t *testing.T) {
	if got := Quote("/a"); got != `"/a"` {
		t.Errorf("Quote(/a) = %s", got)
	}
	// 79 ASCII bytes then a 3-byte rune: the cut must not split it.
	s := "/" + strings.Repeat("a", 78) + "日本"
	got := Quote(s)
	if got != `"/`+strings.Repeat("a", 78)+`"...` {
		t.Errorf("Quote cut a rune or kept too much: %s", got)
	}
	if err := Check("/" + strings.Repeat("a", MaxLen)); len(err.Error()) > 200 {
		t.Errorf("message of %d bytes for a long path: %s", len(err.Error()), err)
	}
}

// FuzzCheck states what an accepted entry is, independently of how Check is written:
// it is what path.Clean leaves alone, absolute, short enough, and an exact entry that a
// prefix rule would not also describe. Every refusal is an *Error with a bounded message.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		"/usr/bin/id", "/opt/app/", "/", "", "rel", "/a/../b", "/a/./b", "/a//b", "/a/\x00",
		"/\xff\xfe", "/日本/語", "/" + strings.Repeat("x", 300) + "/", "/" + strings.Repeat("y", 4095),
		"/lib64/ld-linux-x86-64.so.2", "/usr/lib/", "/...", "/..a/", "/.a", "/a.",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, entry string) {
		err := Check(entry)
		problem := Problem(entry)
		if (err == nil) != (problem == "") {
			t.Fatalf("Check and Problem disagree on %q: %v / %q", entry, err, problem)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Path != entry || e.Problem == "" {
				t.Fatalf("Check(%q) = %#v, want an *Error carrying the entry", entry, err)
			}
			if n := len(err.Error()); n > 600 {
				t.Fatalf("message of %d bytes for %q", n, entry)
			}
			return
		}
		body := strings.TrimSuffix(entry, "/")
		switch {
		case !strings.HasPrefix(entry, "/") || body == "":
			t.Fatalf("accepted %q: not absolute, or the root", entry)
		case path.Clean(body) != body:
			t.Fatalf("accepted %q: not clean (path.Clean gives %q)", entry, path.Clean(body))
		case len(entry) > MaxLen, IsPrefix(entry) && len(entry) > MaxPrefixLen:
			t.Fatalf("accepted %q of %d bytes", entry, len(entry))
		case strings.ContainsRune(entry, 0), !utf8.ValidString(entry):
			t.Fatalf("accepted %q: NUL or invalid UTF-8", entry)
		}
	})
}
