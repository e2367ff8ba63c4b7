/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Command lines kept from exec, so that a victim killed before userspace could
 * read its /proc/<pid>/cmdline still has one. Writes no records: it fills the
 * `commands` map (common.bpf.h), which the signal and mark_victim programs copy
 * from. Assembled after oomtrace.h and common.bpf.h, only with task offsets
 * (OOMTRACE_HAVE_ARGV).
 *
 * Kernel facts relied on (fs/exec.c, kernel/fork.c, include/linux/mm_types.h):
 *  - sched:sched_process_exec fires in the new image once exec can no longer
 *    fail: current->mm is the new mm, and its argv strings sit between
 *    mm->arg_start and mm->arg_end on the new stack, written by exec itself and
 *    so resident (BPF cannot fault a page in). The environment follows at
 *    env_start: reading no further than arg_end keeps it out.
 *  - sched:sched_process_fork fires in the parent after copy_process() and
 *    before wake_up_new_task(): the child cannot exec yet. A forked child that
 *    never execs (a pre-fork server's workers) has its parent's argv. The raw
 *    tracepoint (v4.17) passes both tasks, which tells a new process from a
 *    new thread (CLONE_THREAD: tgid is the parent's).
 *  - Every process begins as a fork, so each new tgid's entry is rewritten or
 *    removed at its fork: an entry left by a dead process whose exit was
 *    missed is never read as another's.
 * Without these hooks (or without BTF for the offsets) the loader leaves this
 * program out and victims' command lines come from /proc while they live.
 */

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	u32 failed = 0;
	u64 start = 0, end = 0;

	const void *mm = oomtrace_read_ptr((const void *)bpf_get_current_task(), OFF_TASK_MM, &failed);
	if (!mm)
		return 0;
	bpf_probe_read_kernel(&start, sizeof(start), (const char *)mm + OFF_MM_ARG_START);
	bpf_probe_read_kernel(&end, sizeof(end), (const char *)mm + OFF_MM_ARG_END);

	struct oomtrace_argv a = {};
	u64 size = end > start ? end - start : 0;
	a.size = size > 0xffffffffULL ? 0xffffffffU : (u32)size;
	a.source = OOMTRACE_ARGV_EXEC;
	u32 len = size < OOMTRACE_ARGV_LEN ? (u32)size : OOMTRACE_ARGV_LEN;
	/* The verifier needs the length bounded at the call itself. */
	if (len > 0 && len <= OOMTRACE_ARGV_LEN &&
	    bpf_probe_read_user(a.args, len, (const void *)start) != 0) {
		commands.delete(&tgid); /* the old image's argv is not this one's */
		return 0;
	}
	if (commands.update(&tgid, &a) != 0)
		oomtrace_commands_full();
	return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	const void *child = (const void *)ctx->args[1];
	u32 pid = 0, tgid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), (const char *)child + OFF_TASK_PID);
	bpf_probe_read_kernel(&tgid, sizeof(tgid), (const char *)child + OFF_TASK_TGID);
	if (pid != tgid)
		return 0; /* a new thread of the same process */
	u32 parent = bpf_get_current_pid_tgid() >> 32;
	struct oomtrace_argv *a = commands.lookup(&parent);
	if (!a) {
		commands.delete(&tgid);
		return 0;
	}
	if (commands.update(&tgid, a) != 0)
		oomtrace_commands_full();
	return 0;
}
