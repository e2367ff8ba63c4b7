/* Stand-in for <uapi/linux/ptrace.h> on x86-64, for kernels without headers:
 * bcc's PT_REGS_PARM* macros read the saved registers of a kprobe through
 * this layout (the order in which the kernel's entry code saves them). */
#ifndef __OOMTRACE_STUB_UAPI_PTRACE_H
#define __OOMTRACE_STUB_UAPI_PTRACE_H
struct pt_regs {
	unsigned long r15;
	unsigned long r14;
	unsigned long r13;
	unsigned long r12;
	unsigned long bp;
	unsigned long bx;
	unsigned long r11;
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long ax;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
	unsigned long ip;
	unsigned long cs;
	unsigned long flags;
	unsigned long sp;
	unsigned long ss;
};
#endif
