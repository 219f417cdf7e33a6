/*
 * exit0: the smallest program that execve can run. No libc, no dynamic
 * loader, one page of text: what is timed is the kernel's fork, exec, exit
 * and wait, and whatever the exec hook adds to them.
 *
 * Built with: cc -static -nostdlib -O2
 */
#if defined(__x86_64__)
__asm__(".globl _start\n"
	"_start:\n"
	"	mov $231, %eax\n" /* exit_group */
	"	xor %edi, %edi\n"
	"	syscall\n");
#elif defined(__aarch64__)
__asm__(".globl _start\n"
	"_start:\n"
	"	mov x8, #94\n" /* exit_group */
	"	mov x0, #0\n"
	"	svc #0\n");
#else
#error "exit0: only x86_64 and aarch64"
#endif
