// Package kernels is the kernel matrix: it reads the rows in the file
// "matrix" (a Debian kernel package, an architecture, boot flags and the
// attach modes that kernel must load), fetches the pinned packages through
// a private apt configuration under the build directory, builds an
// initramfs with busybox, the programs the tests exec and the cross-built
// test binaries, boots each kernel under qemu and reads the verdict from the
// console.
//
// It must not touch the system's apt state or cgroups, and it never trusts
// qemu's exit code: a row passes only when the console says every test
// binary exited 0 with no test skipped.
package kernels
