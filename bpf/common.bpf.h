/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Maps and helpers shared by every oomtrace BPF program. The loader
 * (agent/oomtrace/probes.py) assembles one compilation unit from
 * oomtrace.h, this file and the program files of the chosen tier, after
 * the #defines it computed for the running kernel:
 *   OOMTRACE_RINGBUF_PAGES      size of the ring buffer (a power of two)
 *   OOMTRACE_HAVE_TASK_OFFSETS  set when the kernel's BTF gave the
 *                               OFF_* / MEMORY_CGRP_ID values used below
 *
 * Kernel facts relied on:
 *  - BPF ring buffer (v5.8): one buffer for all CPUs keeps records in the
 *    order they were reserved, which the userspace correlator depends on
 *    (a kill's signal_generate comes before its mark_victim and exit).
 *  - bpf_probe_read_kernel (v5.5) and bpf_get_current_cgroup_id (v4.18).
 * Without BTF offsets the task fields that need a task_struct walk are left
 * zero and flagged OOMTRACE_TASK_NO_OFFSETS; userspace then reads them from
 * /proc while the process is alive.
 */

/* Real kernel headers define it in linux/compiler.h; the stub tree does not. */
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

BPF_RINGBUF_OUTPUT(events, OOMTRACE_RINGBUF_PAGES);

/* Records the ring buffer had no room for, per kind: reported as `lost`. */
BPF_PERCPU_ARRAY(lost_records, u64, OOMTRACE_REC_KINDS);

static __always_inline void *oomtrace_reserve(u32 size, u16 kind)
{
	struct {
		OOMTRACE_HEADER_FIELDS
	} *hdr = events.ringbuf_reserve(size);
	if (!hdr) {
		u32 idx = kind;
		u64 *lost = lost_records.lookup(&idx);
		if (lost)
			(*lost)++;
		return 0;
	}
	hdr->kind = kind;
	hdr->cpu = bpf_get_smp_processor_id();
	hdr->reserved = 0;
	hdr->ktime_ns = bpf_ktime_get_ns();
	return hdr;
}

/*
 * Written and read by the agent only, never by a program: they are declared
 * here so that they live and are pinned with the ring buffer they describe
 * (kernel/pins.py). A restarted agent reads `resume` to find where to start,
 * and `reported` to leave out a kill the previous one had already written.
 * LRU: a kill needs its entry only while its records can be read again.
 */
BPF_ARRAY(resume, struct oomtrace_resume, 1);
BPF_TABLE("lru_hash", struct oomtrace_reported_key, u8, reported, OOMTRACE_REPORTED_MAX);

/* The current task, as a role-neutral view copied into a record's fields. */
struct oomtrace_task_view {
	u32 tid;
	u32 tgid;
	u32 ppid;
	u32 uid;
	u64 start_ns;
	u64 cgroup_id;
	u64 memcg_id;
	s32 oom_score_adj;
	u32 flags;
	char comm[OOMTRACE_COMM_LEN];
	char parent_comm[OOMTRACE_COMM_LEN];
};

#ifdef OOMTRACE_HAVE_TASK_OFFSETS
static __always_inline void *oomtrace_read_ptr(const void *base, u32 off, u32 *failed)
{
	void *val = 0;
	if (bpf_probe_read_kernel(&val, sizeof(val), (const char *)base + off) != 0)
		*failed = 1;
	return val;
}

/* task->cgroups->subsys[memory_cgrp_id]: the task's memory css. */
static __always_inline const void *oomtrace_task_memcg_css(const void *task, u32 *failed)
{
	const void *cset = oomtrace_read_ptr(task, OFF_TASK_CGROUPS, failed);
	if (!cset)
		return 0;
	return oomtrace_read_ptr(cset, OFF_CSS_SET_SUBSYS + MEMORY_CGRP_ID * sizeof(void *), failed);
}

/* css->cgroup->kn->id: the cgroup's id, which is also the inode number of its
 * directory in the hierarchy that mounts the controller (v1 or v2). */
static __always_inline u64 oomtrace_css_id(const void *css, u32 *failed)
{
	u64 id = 0;
	const void *cgrp = oomtrace_read_ptr(css, OFF_CSS_CGROUP, failed);
	const void *kn = cgrp ? oomtrace_read_ptr(cgrp, OFF_CGROUP_KN, failed) : 0;
	if (kn && bpf_probe_read_kernel(&id, sizeof(id), (const char *)kn + OFF_KERNFS_NODE_ID) != 0)
		*failed = 1;
	return id;
}

/* Walks task_struct with offsets learnt from BTF: the tracepoint tier must
 * run on kernels without headers, where bcc cannot see the struct. */
static __always_inline void oomtrace_read_task_struct(const void *task, struct oomtrace_task_view *v)
{
	u32 failed = 0;
	s16 adj = 0;

	const void *leader = oomtrace_read_ptr(task, OFF_TASK_GROUP_LEADER, &failed);
	if (leader && bpf_probe_read_kernel(&v->start_ns, sizeof(v->start_ns),
					     (const char *)leader + OFF_TASK_START_BOOTTIME) != 0)
		failed = 1;

	const void *parent = oomtrace_read_ptr(task, OFF_TASK_REAL_PARENT, &failed);
	if (parent) {
		if (bpf_probe_read_kernel(&v->ppid, sizeof(v->ppid), (const char *)parent + OFF_TASK_TGID) != 0)
			failed = 1;
		bpf_probe_read_kernel_str(v->parent_comm, sizeof(v->parent_comm),
					  (const char *)parent + OFF_TASK_COMM);
	}

	const void *sig = oomtrace_read_ptr(task, OFF_TASK_SIGNAL, &failed);
	if (sig && bpf_probe_read_kernel(&adj, sizeof(adj), (const char *)sig + OFF_SIGNAL_OOM_SCORE_ADJ) != 0)
		failed = 1;
	v->oom_score_adj = adj;

	const void *css = oomtrace_task_memcg_css(task, &failed);
	if (css) {
		v->memcg_id = oomtrace_css_id(css, &failed);
		/* mem_cgroup.oom_group (memory.oom.group, cgroup v2 only; css is the
		 * mem_cgroup, see oomtrace_read_memcg_counter): an OOM kill there takes
		 * every process of the memcg in one run, however slowly the scan goes. */
		u8 group = 0;
		if (bpf_probe_read_kernel(&group, sizeof(group), (const char *)css + OFF_MEMCG_OOM_GROUP) == 0 &&
		    group)
			v->flags |= OOMTRACE_TASK_MEMCG_OOM_GROUP;
	}
	if (failed)
		v->flags |= OOMTRACE_TASK_READ_FAILED;
}

/* Any task, not only the current one: identity from task_struct itself. The
 * cgroup v2 id is that of css_set->dfl_cgrp, the uid the real_cred's. */
static __always_inline void oomtrace_read_task(const void *task, struct oomtrace_task_view *v)
{
	u32 failed = 0;
	bpf_probe_read_kernel(&v->tid, sizeof(v->tid), (const char *)task + OFF_TASK_PID);
	bpf_probe_read_kernel(&v->tgid, sizeof(v->tgid), (const char *)task + OFF_TASK_TGID);
	bpf_probe_read_kernel_str(v->comm, sizeof(v->comm), (const char *)task + OFF_TASK_COMM);
	const void *cred = oomtrace_read_ptr(task, OFF_TASK_REAL_CRED, &failed);
	if (cred)
		bpf_probe_read_kernel(&v->uid, sizeof(v->uid), (const char *)cred + OFF_CRED_UID);
	const void *cset = oomtrace_read_ptr(task, OFF_TASK_CGROUPS, &failed);
	const void *dfl = cset ? oomtrace_read_ptr(cset, OFF_CSS_SET_DFL_CGRP, &failed) : 0;
	const void *kn = dfl ? oomtrace_read_ptr(dfl, OFF_CGROUP_KN, &failed) : 0;
	if (kn)
		bpf_probe_read_kernel(&v->cgroup_id, sizeof(v->cgroup_id), (const char *)kn + OFF_KERNFS_NODE_ID);
	oomtrace_read_task_struct(task, v);
	if (failed)
		v->flags |= OOMTRACE_TASK_READ_FAILED;
}

/* Usage and limit of the memcg whose css is `css`, in pages. */
static __always_inline void oomtrace_read_memcg_counter(const void *css, u64 *usage, u64 *max)
{
	/* css is the first member of struct mem_cgroup (OFF_MEMCG_CSS == 0 is
	 * checked by the loader), so the css pointer is the mem_cgroup. */
	const char *counter = (const char *)css + OFF_MEMCG_MEMORY;
	bpf_probe_read_kernel(usage, sizeof(*usage), counter + OFF_PAGE_COUNTER_USAGE);
	bpf_probe_read_kernel(max, sizeof(*max), counter + OFF_PAGE_COUNTER_MAX);
}
#endif

static __always_inline void oomtrace_read_current(struct oomtrace_task_view *v)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	v->tid = (u32)pid_tgid;
	v->tgid = pid_tgid >> 32;
	v->uid = (u32)bpf_get_current_uid_gid();
	v->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(v->comm, sizeof(v->comm));
#ifdef OOMTRACE_HAVE_TASK_OFFSETS
	oomtrace_read_task_struct((const void *)bpf_get_current_task(), v);
#else
	v->flags |= OOMTRACE_TASK_NO_OFFSETS;
#endif
}

/* Copies a task view into the role-named fields of record `r`. */
#define OOMTRACE_STORE_TASK(r, p, v)                                            \
	do {                                                                        \
		(r)->p##_tid = (v)->tid;                                                \
		(r)->p##_tgid = (v)->tgid;                                              \
		(r)->p##_ppid = (v)->ppid;                                              \
		(r)->p##_uid = (v)->uid;                                                \
		(r)->p##_start_ns = (v)->start_ns;                                      \
		(r)->p##_cgroup_id = (v)->cgroup_id;                                    \
		(r)->p##_memcg_id = (v)->memcg_id;                                      \
		(r)->p##_oom_score_adj = (v)->oom_score_adj;                            \
		(r)->p##_flags = (v)->flags;                                            \
		__builtin_memcpy((r)->p##_comm, (v)->comm, OOMTRACE_COMM_LEN);          \
		__builtin_memcpy((r)->p##_parent_comm, (v)->parent_comm, OOMTRACE_COMM_LEN); \
	} while (0)

/*
 * Command lines of the node's live processes, keyed by tgid (commands.bpf.c
 * writes them at exec and fork, signals.bpf.c forgets them at exit). A hash, not
 * an LRU: a long-lived process's entry, the one a leak's victim needs, must not
 * be evicted by a build's churn of short-lived ones. When the map is full an
 * exec is counted in commands_full and its process left out; userspace then
 * reads /proc as before. Not preallocated: memory grows with the live
 * processes, up to OOMTRACE_ARGV_MAX entries (from the loader).
 */
#ifdef OOMTRACE_HAVE_ARGV
BPF_F_TABLE("hash", u32, struct oomtrace_argv, commands, OOMTRACE_ARGV_MAX, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(commands_full, u64, 1);

static __always_inline void oomtrace_commands_full(void)
{
	u32 zero = 0;
	u64 *n = commands_full.lookup(&zero);
	if (n)
		(*n)++;
}
#endif

/* Copies process `tgid`'s argv into a record's OOMTRACE_ARGV_FIELDS, which have
 * the layout of struct oomtrace_argv. Without an entry the args are zeroed too:
 * reserved ring-buffer memory holds older records' bytes, which must not travel
 * on in this one. */
static __always_inline void oomtrace_copy_argv(u32 tgid, struct oomtrace_argv *dst)
{
#ifdef OOMTRACE_HAVE_ARGV
	const struct oomtrace_argv *a = commands.lookup(&tgid);
	if (a) {
		__builtin_memcpy(dst, a, sizeof(*a));
		return;
	}
#endif
	dst->size = 0;
	dst->source = OOMTRACE_ARGV_NONE;
	__builtin_memset(dst->args, 0, sizeof(dst->args));
}
