/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kprobe on oom_kill_process(struct oom_control *oc, const char *message):
 * the OOM killer's own view of one invocation, which no tracepoint gives.
 * Assembled after oomtrace.h and common.bpf.h; the loader attaches
 * oomtrace_oom_kill_process to the symbol it found in kallsyms.
 *
 * Kernel facts relied on (mm/oom_kill.c, include/linux/oom.h):
 *  - oom_kill_process() runs in the trigger task once select_bad_process()
 *    has set oc->chosen; it is called once per invocation, for the chosen
 *    victim only: memory.oom.group members and mm sharers are killed from
 *    inside it (seen by oom_victim.bpf.c and signals.bpf.c).
 *  - oc->memcg is NULL for a global OOM; oc->totalpages is the LIMIT in
 *    pages (the memcg's max, or RAM + swap), not what anything used;
 *    oc->order is -1 for a sysrq-triggered kill.
 *  - struct oom_control's layout comes from BTF (OFF_OC_* defines), so no
 *    kernel headers are needed. Without kprobes (CONFIG_KPROBES=n), without
 *    the symbol, or without BTF the loader leaves this program out and the
 *    tracepoint tier reports the kill without these fields.
 */

/* struct pt_regs for PT_REGS_PARM1: the kernel's uapi header, or the stub's. */
#include <uapi/linux/ptrace.h>

int oomtrace_oom_kill_process(struct pt_regs *ctx)
{
	const void *oc = (const void *)PT_REGS_PARM1(ctx);
	u32 failed = 0;

	struct oomtrace_task_view trigger = {};
	oomtrace_read_current(&trigger);

	struct oomtrace_oom_kill_rec *r = oomtrace_reserve(sizeof(*r), OOMTRACE_REC_OOM_KILL);
	if (!r)
		return 0;
	__builtin_memset(&r->victim_tid, 0, sizeof(*r) - __builtin_offsetof(struct oomtrace_oom_kill_rec, victim_tid));
	OOMTRACE_STORE_TASK(r, trigger, &trigger);

	const void *chosen = oomtrace_read_ptr(oc, OFF_OC_CHOSEN, &failed);
	if (chosen) {
		bpf_probe_read_kernel(&r->victim_tid, sizeof(r->victim_tid), (const char *)chosen + OFF_TASK_PID);
		bpf_probe_read_kernel(&r->victim_tgid, sizeof(r->victim_tgid), (const char *)chosen + OFF_TASK_TGID);
		bpf_probe_read_kernel_str(r->victim_comm, sizeof(r->victim_comm), (const char *)chosen + OFF_TASK_COMM);
	}
	const void *memcg = oomtrace_read_ptr(oc, OFF_OC_MEMCG, &failed);
	if (memcg) {
		u64 max = 0;
		r->oom_memcg_id = oomtrace_css_id(memcg, &failed);
		oomtrace_read_memcg_counter(memcg, &r->oom_memcg_usage_pages, &max);
	}
	bpf_probe_read_kernel(&r->totalpages, sizeof(r->totalpages), (const char *)oc + OFF_OC_TOTALPAGES);
	bpf_probe_read_kernel(&r->chosen_points, sizeof(r->chosen_points), (const char *)oc + OFF_OC_CHOSEN_POINTS);
	bpf_probe_read_kernel(&r->gfp_mask, sizeof(r->gfp_mask), (const char *)oc + OFF_OC_GFP_MASK);
	bpf_probe_read_kernel(&r->order, sizeof(r->order), (const char *)oc + OFF_OC_ORDER);
	bpf_probe_read_kernel(&r->constraint, sizeof(r->constraint), (const char *)oc + OFF_OC_CONSTRAINT);
	events.ringbuf_submit(r, 0);
	return 0;
}
