/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Records that oomtrace's BPF programs write to the ring buffer.
 *
 * This header is the single definition shared by the kernel side and the
 * userspace decoder (agent/oomtrace/kernel/records.py mirrors it, and a root test
 * compares that mirror with the layout bcc builds from this file).
 *
 * Rules that keep the two sides in step:
 *  - every record starts with OOMTRACE_HEADER_FIELDS, so userspace can read
 *    `kind` before it knows the rest;
 *  - fields are flat and fixed-width, with no nested structs: bcc's generated
 *    ctypes classes (used by the alignment test) cannot express nesting;
 *  - 64-bit fields sit on 8-byte boundaries, so no record has hidden padding.
 */
#ifndef OOMTRACE_H
#define OOMTRACE_H

/*
 * The layout of everything an agent reads from a kernel side another agent
 * loaded: the records below, the ring buffer they go to, and the maps pinned
 * in bpffs (struct oomtrace_resume, struct oomtrace_reported_key). A restarted
 * agent resumes pinned programs only when their layout version is its own, so
 * any change to a struct in this file bumps it (tests/unit/test_layout_version.py
 * fails until it is bumped).
 */
#define OOMTRACE_LAYOUT_VERSION 1

#define OOMTRACE_COMM_LEN 16
#define OOMTRACE_MEMCG_LEVELS 4 /* trigger's memcg and its nearest ancestors */
#define OOMTRACE_CGROUP_PATH_LEN 512
/* The head of a process's argv kept from its exec: enough for the program and
 * the arguments that tell one worker from another, small enough that a map of
 * every live process stays in the low megabytes. */
#define OOMTRACE_ARGV_LEN 256

/* Record kinds: the first field of every record. */
#define OOMTRACE_REC_SIGNAL 1       /* signal:signal_generate: a traced signal, or a runtime's stop signal */
#define OOMTRACE_REC_MARK_VICTIM 2  /* oom:mark_victim */
#define OOMTRACE_REC_DELIVER 3      /* signal:signal_deliver, in the victim */
#define OOMTRACE_REC_EXIT 4         /* sched:sched_process_exit, of a signalled process */
#define OOMTRACE_REC_CGROUP_MKDIR 5 /* cgroup:cgroup_mkdir */
#define OOMTRACE_REC_OOM_KILL 6     /* kprobe oom_kill_process (kprobe tier) */
#define OOMTRACE_REC_KINDS 8        /* size of the per-kind lost counter array */

/* Bits of <role>_flags: which parts of a task could not be read. */
#define OOMTRACE_TASK_NO_OFFSETS 1 /* no BTF offsets: only BPF helper fields are set */
#define OOMTRACE_TASK_READ_FAILED 2
/* Not a failure: the task's memcg has memory.oom.group set. */
#define OOMTRACE_TASK_MEMCG_OOM_GROUP 4

/* Values of info_kind. SEND_SIG_NOINFO is what in-kernel senders without a
 * siginfo pass: cgroup.kill among them; kill(2) always passes a siginfo. */
#define OOMTRACE_INFO_UNKNOWN 0 /* the plain tracepoint does not say */
#define OOMTRACE_INFO_NOINFO 1  /* SEND_SIG_NOINFO: si_code SI_USER, sent from inside the kernel */
#define OOMTRACE_INFO_PRIV 2    /* SEND_SIG_PRIV: si_code SI_KERNEL */
#define OOMTRACE_INFO_SIGINFO 3 /* a real siginfo: kill(2), tgkill(2), faults, ... */

/* Values of a signal record's `role`: why the signal was recorded. */
#define OOMTRACE_SIGNAL_TRACED 1 /* a traced signal (--signals): a kill of its own */
#define OOMTRACE_SIGNAL_STOP 2   /* a container runtime's stop signal: evidence of a stop */

/*
 * The value of the traced_signals map (one entry), written by userspace: bit n
 * of `traced` set means signal n is traced; bit n of `stop` means signal n,
 * sent by a container runtime (OOMTRACE_STOP_SENDERS), is followed as a stop.
 */
struct oomtrace_signal_masks {
	__u64 traced;
	__u64 stop;
};

/* Values of mark_victim_layout. */
#define OOMTRACE_MARK_VICTIM_PID_ONLY 0 /* before v6.9 (and its stable backports) */
#define OOMTRACE_MARK_VICTIM_FULL 1     /* comm, rss fields, uid, pgtables, oom_score_adj */

/* Values of <role>_argv.source: where a process's argv was kept from. */
#define OOMTRACE_ARGV_NONE 0 /* not known: no entry, or no task offsets */
#define OOMTRACE_ARGV_EXEC 1 /* read in the kernel at exec, or inherited at fork */
#define OOMTRACE_ARGV_PROC 2 /* read by the agent from /proc at its start */

#define OOMTRACE_HEADER_FIELDS \
	__u16 kind;                \
	__u16 cpu;                 \
	__u32 reserved;            \
	__u64 ktime_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */

/*
 * The task the program runs in, captured in the kernel because userspace can
 * lose it to a race (the task exits, its pid is reused, its cgroup removed).
 * `p` names its role in the record: sender, trigger or victim.
 *   start_ns:   group leader's start_boottime; with tgid it keys a process,
 *               since /proc/<pid>/stat's starttime is the same clock in ticks.
 *   cgroup_id:  cgroup v2 (default hierarchy) id.
 *   memcg_id:   id of the cgroup that holds the task's memory controller
 *               state (v1 memory hierarchy or v2), i.e. where OOM applies.
 */
#define OOMTRACE_TASK_FIELDS(p)            \
	__u32 p##_tid;                         \
	__u32 p##_tgid;                        \
	__u32 p##_ppid;                        \
	__u32 p##_uid;                         \
	__u64 p##_start_ns;                    \
	__u64 p##_cgroup_id;                   \
	__u64 p##_memcg_id;                    \
	__s32 p##_oom_score_adj;               \
	__u32 p##_flags;                       \
	char p##_comm[OOMTRACE_COMM_LEN];      \
	char p##_parent_comm[OOMTRACE_COMM_LEN];

/*
 * A process's argv as it was at exec: the NUL-separated strings between
 * mm->arg_start and mm->arg_end, cut at OOMTRACE_ARGV_LEN. It is the value of
 * the `commands` map (keyed by tgid) and is copied whole into records, so a
 * victim's command line survives the victim. `size` is arg_end - arg_start:
 * larger than OOMTRACE_ARGV_LEN when the argv was cut.
 */
struct oomtrace_argv {
	__u32 size;
	__u32 source; /* OOMTRACE_ARGV_* */
	char args[OOMTRACE_ARGV_LEN];
};

#define OOMTRACE_ARGV_FIELDS(p) \
	__u32 p##_argv_size;        \
	__u32 p##_argv_source;      \
	char p##_argv[OOMTRACE_ARGV_LEN];

/* A traced signal was generated; the current task is the sender. */
struct oomtrace_signal_rec {
	OOMTRACE_HEADER_FIELDS
	OOMTRACE_TASK_FIELDS(sender)
	__u32 target_tid; /* the tracepoint's pid: a thread id */
	__s32 sig;
	__s32 errno_value;
	__s32 code;  /* si_code: 0 SI_USER, 128 SI_KERNEL, -6 SI_TKILL, ... */
	__s32 group; /* 1: sent to the whole thread group */
	__s32 result; /* 0 delivered, 1 ignored, 2 already pending, 3/4 overflow */
	char target_comm[OOMTRACE_COMM_LEN];
	/* The target as the kernel knew it when the signal was generated (raw
	 * tracepoint with BTF offsets; zero otherwise, see target_flags). */
	__u32 target_tgid;
	__u32 target_uid;
	__u32 info_kind; /* OOMTRACE_INFO_*: how the kernel was handed the siginfo */
	__u32 role;      /* OOMTRACE_SIGNAL_* */
	__u64 target_start_ns;
	__u64 target_cgroup_id;
	__u64 target_memcg_id;
	__s32 target_oom_score_adj;
	__u32 target_flags;
	/* The sender's controlling terminal (tty_struct.name, e.g. "pts3"), read
	 * in the kernel: a person's short-lived kill(1) is gone before /proc. */
	char sender_tty[OOMTRACE_COMM_LEN];
	/* Both processes' argv from the commands map: the target (the victim)
	 * and a sender script may be gone before userspace reads /proc. */
	OOMTRACE_ARGV_FIELDS(target)
	OOMTRACE_ARGV_FIELDS(sender)
};

/* The OOM killer marked a victim; the current task is the trigger. */
struct oomtrace_mark_victim_rec {
	OOMTRACE_HEADER_FIELDS
	OOMTRACE_TASK_FIELDS(trigger)
	__u32 victim_tid; /* from find_lock_task_mm(): may be any thread */
	__u32 victim_uid;
	__u64 victim_total_vm_kb;
	__u64 victim_anon_rss_kb;
	__u64 victim_file_rss_kb;
	__u64 victim_shmem_rss_kb;
	__u64 victim_pgtables_kb;
	__s32 victim_oom_score_adj;
	__u32 mark_victim_layout;
	char victim_comm[OOMTRACE_COMM_LEN];
	/* The trigger's memcg (level 0) and its ancestors at the moment of the
	 * kill: the failed charge was against one of them. Read in the kernel
	 * because the victim's memory is freed within milliseconds. Ids of 0
	 * end the list; max is PAGE_COUNTER_MAX when unlimited. */
	__u64 trigger_memcg_ids[OOMTRACE_MEMCG_LEVELS];
	__u64 trigger_memcg_usage_pages[OOMTRACE_MEMCG_LEVELS];
	__u64 trigger_memcg_max_pages[OOMTRACE_MEMCG_LEVELS];
	OOMTRACE_ARGV_FIELDS(trigger)
};

/* A traced signal reached its target; the current task is the victim. */
struct oomtrace_deliver_rec {
	OOMTRACE_HEADER_FIELDS
	OOMTRACE_TASK_FIELDS(victim)
	__u64 kill_ktime_ns; /* when the matching signal was generated */
	__u32 kill_sender_tgid;
	__s32 kill_sig;
	__s32 sig; /* SIGKILL for every thread of a dying group */
	__s32 code;
	__u64 sa_handler; /* 0 SIG_DFL, 1 SIG_IGN, else a handler */
};

/* A signalled process exited; the current task is the victim. */
struct oomtrace_exit_rec {
	OOMTRACE_HEADER_FIELDS
	OOMTRACE_TASK_FIELDS(victim)
	__u64 kill_ktime_ns;
	__u32 kill_sender_tgid;
	__s32 kill_sig;
	__s32 exit_code; /* wait status: low 7 bits signal, bits 8-15 status */
	__u32 group_dead;
};

/* A cgroup was created: keeps id -> path known after the cgroup is gone. */
struct oomtrace_cgroup_rec {
	OOMTRACE_HEADER_FIELDS
	__s32 hierarchy; /* 0 for cgroup v2, else the v1 hierarchy id (/proc/cgroups) */
	__s32 level;
	__u64 cgroup_id;
	char path[OOMTRACE_CGROUP_PATH_LEN];
};

/* Entry of oom_kill_process(); the current task is the trigger. */
struct oomtrace_oom_kill_rec {
	OOMTRACE_HEADER_FIELDS
	OOMTRACE_TASK_FIELDS(trigger)
	__u32 victim_tid;
	__u32 victim_tgid;
	__u64 oom_memcg_id; /* 0: not a memcg OOM */
	__u64 totalpages;   /* the LIMIT in pages: memcg max, or RAM + swap */
	__s64 chosen_points;
	__u32 gfp_mask;
	__s32 order; /* -1: sysrq */
	__u32 constraint; /* enum oom_constraint */
	__u32 pad0;
	__u64 oom_memcg_usage_pages;
	char victim_comm[OOMTRACE_COMM_LEN];
};

/*
 * The one value of the pinned `resume` map, written by the agent only: where
 * a later agent starts reading the ring buffer, and what this one already
 * reported. A record before `commit` belongs to a kill that was reported or
 * can no longer be; one at or after it may belong to a kill the agent had not
 * finished when it stopped, so the next agent reads from here again (the
 * kernel does not overwrite it: see kernel/pins.py).
 */
struct oomtrace_resume {
	__u64 commit;           /* ring buffer position (bytes) to resume from */
	__u64 realtime_ns;      /* CLOCK_REALTIME of the agent's last read */
	__u64 lost_reported[OOMTRACE_REC_KINDS]; /* lost_records already reported */
};

/* Key of the pinned `reported` map: a kill already written out, by the
 * ktime of the record that opened it and its victim thread. */
struct oomtrace_reported_key {
	__u64 ktime_ns;
	__u32 victim_tid;
	__u32 pad;
};

#endif /* OOMTRACE_H */
