package report

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ns formats nanoseconds with a unit a person reads at a glance.
func ns(v float64) string {
	a := math.Abs(v)
	switch {
	case a > 0 && a < 1:
		return fmt.Sprintf("%.3f ns", v)
	case a < 1e3:
		return fmt.Sprintf("%.0f ns", v)
	case a < 1e4:
		return fmt.Sprintf("%.2f µs", v/1e3)
	case a < 1e6:
		return fmt.Sprintf("%.1f µs", v/1e3)
	case a < 1e9:
		return fmt.Sprintf("%.2f ms", v/1e6)
	}
	return fmt.Sprintf("%.2f s", v/1e9)
}

func dur(d time.Duration) string { return ns(float64(d)) }

// signedNs is ns with an explicit sign.
func signedNs(v float64) string {
	if v >= 0 {
		return "+" + ns(v)
	}
	return "−" + ns(-v)
}

// bytes formats a size in binary units, as the targets are written.
func bytes(v float64) string {
	a := math.Abs(v)
	switch {
	case a < 1<<10:
		return fmt.Sprintf("%.0f B", v)
	case a < 1<<20:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	case a < 1<<30:
		return fmt.Sprintf("%.2f MiB", v/(1<<20))
	}
	return fmt.Sprintf("%.2f GiB", v/(1<<30))
}

// ratio formats a ratio with enough digits to show a small difference.
func ratio(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "n/a"
	case v < 0.001:
		return fmt.Sprintf("%.2g×", v)
	case v < 0.1:
		return fmt.Sprintf("%.4f×", v)
	case v < 10:
		return fmt.Sprintf("%.3f×", v)
	}
	return fmt.Sprintf("%.0f×", v)
}

// count formats an integer with thousands separators: 10,000.
func count(n int) string {
	s := strconv.Itoa(n)
	if n < 0 {
		return "-" + count(-n)
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return count(n) + " " + one
	}
	return count(n) + " " + many
}
