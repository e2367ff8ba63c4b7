/* bcc refuses to build unless the kernel config says BPF syscalls exist;
 * a kernel that runs this loader evidently has them. */
#define CONFIG_BPF_SYSCALL 1
