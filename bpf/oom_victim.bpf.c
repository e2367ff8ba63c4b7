/* SPDX-License-Identifier: Apache-2.0 */
/*
 * oom:mark_victim: the kernel OOM killer chose a victim. Assembled after
 * oomtrace.h and common.bpf.h.
 *
 * Kernel facts relied on (mm/oom_kill.c, include/trace/events/oom.h):
 *  - __oom_kill_process() sends SIGKILL (seen by signals.bpf.c), then calls
 *    mark_oom_victim(), whose tracepoint runs in the task whose allocation
 *    or charge failed: the trigger. Every memory.oom.group member killed in
 *    the same invocation is marked too; processes that only share the
 *    victim's mm get a SIGKILL and no mark.
 *  - The tracepoint had only `pid` until v6.9 (commit 72ba14deb40a, backported
 *    to 6.1/6.6 stable). The loader reads the format file and defines
 *    OOMTRACE_MARK_VICTIM_HAS_RSS when comm, the rss fields, uid, pgtables
 *    and oom_score_adj exist; otherwise only the pid is recorded and
 *    userspace fills the rest from /proc and the victim's deliver record.
 *  - `pid` is a thread id (find_lock_task_mm() may pick any thread).
 *  - The charge that failed was the trigger's, so with BTF offsets the
 *    trigger's memcg and its ancestors are read here (usage and max of
 *    mem_cgroup.memory, a page_counter): the OOM memcg is among them for a
 *    memcg OOM. Without BTF these stay zero and userspace reads the memcg
 *    files, later.
 *  - The trigger's argv is copied from the commands map (commands.bpf.c);
 *    without it the record says so (source OOMTRACE_ARGV_NONE).
 */

TRACEPOINT_PROBE(oom, mark_victim)
{
	struct oomtrace_task_view trigger = {};
	oomtrace_read_current(&trigger);

	struct oomtrace_mark_victim_rec *r = oomtrace_reserve(sizeof(*r), OOMTRACE_REC_MARK_VICTIM);
	if (!r)
		return 0;
	__builtin_memset(&r->victim_tid, 0, sizeof(*r) - __builtin_offsetof(struct oomtrace_mark_victim_rec, victim_tid));
	OOMTRACE_STORE_TASK(r, trigger, &trigger);
	r->victim_tid = args->pid;
#ifdef OOMTRACE_MARK_VICTIM_HAS_RSS
	r->mark_victim_layout = OOMTRACE_MARK_VICTIM_FULL;
	r->victim_uid = args->uid;
	r->victim_total_vm_kb = args->total_vm;
	r->victim_anon_rss_kb = args->anon_rss;
	r->victim_file_rss_kb = args->file_rss;
	r->victim_shmem_rss_kb = args->shmem_rss;
	r->victim_pgtables_kb = args->pgtables;
	r->victim_oom_score_adj = args->oom_score_adj;
	TP_DATA_LOC_READ_STR(r->victim_comm, comm, OOMTRACE_COMM_LEN);
#else
	r->mark_victim_layout = OOMTRACE_MARK_VICTIM_PID_ONLY;
#endif
#ifdef OOMTRACE_HAVE_TASK_OFFSETS
	u32 failed = 0;
	const void *css = oomtrace_task_memcg_css((const void *)bpf_get_current_task(), &failed);
	/* A bounded loop (verifier-checked since v5.3). */
	for (int i = 0; i < OOMTRACE_MEMCG_LEVELS; i++) {
		if (!css)
			break;
		r->trigger_memcg_ids[i] = oomtrace_css_id(css, &failed);
		oomtrace_read_memcg_counter(css, &r->trigger_memcg_usage_pages[i], &r->trigger_memcg_max_pages[i]);
		css = oomtrace_read_ptr(css, OFF_CSS_PARENT, &failed);
	}
#endif
	/* The trigger's command line, in case it too is gone (killed by the same
	 * OOM, or a short-lived allocator) before userspace reads /proc. */
	oomtrace_copy_argv(trigger.tgid, (struct oomtrace_argv *)&r->trigger_argv_size);
	events.ringbuf_submit(r, 0);
	return 0;
}
