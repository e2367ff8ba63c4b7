/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Signals: who sent a traced signal, and proof that its target received it
 * and died. Assembled after oomtrace.h and common.bpf.h.
 *
 * Kernel facts relied on (include/trace/events/signal.h, kernel/signal.c,
 * kernel/exit.c):
 *  - signal:signal_generate fires in the sender's context; its pid/comm are
 *    the TARGET thread's. The OOM killer's SIGKILL has code SI_KERNEL and is
 *    sent from the task whose allocation failed. With BTF offsets the raw
 *    tracepoint is used instead, to read the target task itself.
 *  - signal:signal_deliver fires in the receiving thread, for every signal
 *    delivered on the node. A group SIGKILL (and any fatal signal) shows as
 *    SIGKILL in every thread, with no sender: it only tells which process
 *    received a kill we saw generated, and whether a handler caught it.
 *    SIGKILL cannot be caught, blocked or ignored: once queued
 *    (TRACE_SIGNAL_DELIVERED) it ends the target's whole thread group. So when
 *    the raw signal_generate reads the target's tgid and SIGKILL is the only
 *    traced signal, a kill waits for its exit directly and the loader leaves
 *    signal_deliver out (OOMTRACE_NEEDS_DELIVER undefined): the one program
 *    that would otherwise run on every signal of the node. When it is
 *    needed, BTF offsets (k_sigaction's handler) allow its raw form.
 *  - A container runtime stops a container with its stop signal (SIGTERM
 *    unless the image names another), sent with kill(2) by the OCI runtime's
 *    `kill` command (runc, crun, ...: the kubelet and containerd never signal
 *    a container themselves), then SIGKILL after the stop's timeout. Such a
 *    stop signal is recorded too (role OOMTRACE_SIGNAL_STOP) when the loader
 *    defines OOMTRACE_FOLLOW_STOPS (task offsets: the target's tgid keys its
 *    exit): only signals in the stop mask pay for the sender's comm, so every
 *    other untraced signal costs what it did. Without it a stop is known only
 *    by its SIGKILL.
 *  - sched:sched_process_exit fires in the exiting thread for every thread
 *    on the node, so it is filtered here to processes we saw signalled.
 *    `group_dead` exists on recent kernels; without it (loader leaves
 *    OOMTRACE_EXIT_HAS_GROUP_DEAD undefined) the thread-group leader's exit
 *    stands for the process.
 * All three tracepoints exist since v3.x/v4.x, raw tracepoints since v4.17;
 * nothing here needs BTF, but without it the plain tracepoints are used, the
 * task fields that walk task_struct stay empty, and signal_deliver is always
 * attached (the plain signal_generate knows only the target thread).
 */

/* Written by userspace (--signals and the stop signals); ordinary signal
 * traffic is dropped by the first test below. */
BPF_ARRAY(traced_signals, struct oomtrace_signal_masks, 1);

#define OOMTRACE_SIGKILL 9 /* the same number on every architecture */

struct oomtrace_pending {
	u64 ktime_ns;
	u32 sender_tgid;
	s32 sig;
};

#ifdef OOMTRACE_NEEDS_DELIVER
/* Generated, not yet delivered: keyed by target thread id. LRU, so a
 * signal whose target never runs again cannot fill the map. */
BPF_TABLE("lru_hash", u32, struct oomtrace_pending, pending_signals, OOMTRACE_PENDING_MAX);
#endif

/* Delivered (or a queued SIGKILL), exit not yet seen: keyed by tgid. As many
 * as the agent follows (OOMTRACE_PENDING_MAX, from the loader): a smaller map
 * would forget the exits of the oldest kills when more wait together, as in a
 * frozen cgroup. */
BPF_TABLE("lru_hash", u32, struct oomtrace_pending, dying, OOMTRACE_PENDING_MAX);

/* Where a queued signal waits for the next record of its kill. */
static __always_inline void oomtrace_signal_queued(int sig, u32 role, const struct oomtrace_task_view *target,
						   const struct oomtrace_pending *p)
{
#ifdef OOMTRACE_HAVE_TASK_OFFSETS
	if (role == OOMTRACE_SIGNAL_STOP) {
		/* The process may exit on it (exit 143, or a clean shutdown): wait
		 * for that exit. An entry already there is a SIGKILL's, which ends
		 * the process whatever follows: insert() (BPF_NOEXIST) keeps it,
		 * and a SIGKILL after this one replaces it below. */
		u32 stopped = target->tgid;
		dying.insert(&stopped, (struct oomtrace_pending *)p);
		return;
	}
	if (sig == OOMTRACE_SIGKILL) {
		/* Nothing can stop a queued SIGKILL: wait for the exit of the
		 * target's process, whichever thread it was sent to. */
		u32 tgid = target->tgid;
		dying.update(&tgid, (struct oomtrace_pending *)p); /* bcc declares update without const */
		return;
	}
#endif
#ifdef OOMTRACE_NEEDS_DELIVER
	/* The loader defines it whenever a signal may get here: without task
	 * offsets, or with a traced signal other than SIGKILL. */
	u32 tid = target->tid;
	pending_signals.update(&tid, p);
#endif
}

#ifdef OOMTRACE_FOLLOW_STOPS
/* Whether the current task is a container runtime that sends a container's
 * signals. The loader defines OOMTRACE_STOP_SENDERS as a list of
 * OOMTRACE_SENDER(lo, hi), each name's 16 NUL-padded comm bytes read as two
 * u64: two compares a name, with no map lookup and no loop for the verifier. */
static __always_inline bool oomtrace_stop_sender(void)
{
	u64 comm[2] = {};

	bpf_get_current_comm(comm, sizeof(comm));
#define OOMTRACE_SENDER(lo, hi)                        \
	if (comm[0] == (lo##ULL) && comm[1] == (hi##ULL)) \
		return true;
	OOMTRACE_STOP_SENDERS
#undef OOMTRACE_SENDER
	return false;
}
#endif

/* Why a signal is recorded (OOMTRACE_SIGNAL_*), or 0 for the untraced traffic. */
static __always_inline u32 oomtrace_signal_role(int sig)
{
	u32 zero = 0;
	struct oomtrace_signal_masks *masks;

	if (sig <= 0 || sig >= 64)
		return 0;
	masks = traced_signals.lookup(&zero);
	if (!masks)
		return 0;
	if (masks->traced & (1ULL << sig))
		return OOMTRACE_SIGNAL_TRACED;
#ifdef OOMTRACE_FOLLOW_STOPS
	if ((masks->stop & (1ULL << sig)) && oomtrace_stop_sender())
		return OOMTRACE_SIGNAL_STOP;
#endif
	return 0;
}

/* For signal_deliver, which never follows a stop: only the traced mask. */
static __always_inline bool oomtrace_signal_traced(int sig)
{
	u32 zero = 0;
	struct oomtrace_signal_masks *masks;

	if (sig <= 0 || sig >= 64)
		return false;
	masks = traced_signals.lookup(&zero);
	return masks && (masks->traced & (1ULL << sig));
}

/* `target` holds at least tid and comm; with BTF, the whole task. */
static __always_inline int oomtrace_signal_generated(int sig, u32 role, int errno_value, int code,
						     int group, int result, u32 info_kind,
						     const struct oomtrace_task_view *target)
{
	struct oomtrace_task_view sender = {};
	oomtrace_read_current(&sender);
	/* The record and the pending entry share this timestamp: with the
	 * sender's tgid it links deliver and exit records back to this one. */
	u64 now = bpf_ktime_get_ns();

	/* Only a queued signal can be delivered; "ignored" and "already
	 * pending" results still go to userspace, but wait for nothing. */
	if (result == 0) {
		struct oomtrace_pending p = {};
		p.ktime_ns = now;
		p.sender_tgid = sender.tgid;
		p.sig = sig;
		oomtrace_signal_queued(sig, role, target, &p);
	}

	struct oomtrace_signal_rec *r = oomtrace_reserve(sizeof(*r), OOMTRACE_REC_SIGNAL);
	if (!r)
		return 0;
	r->ktime_ns = now;
	OOMTRACE_STORE_TASK(r, sender, &sender);
	r->target_tid = target->tid;
	r->sig = sig;
	r->errno_value = errno_value;
	r->code = code;
	r->group = group;
	r->result = result;
	__builtin_memcpy(r->target_comm, target->comm, OOMTRACE_COMM_LEN);
	r->target_tgid = target->tgid;
	r->target_uid = target->uid;
	r->info_kind = info_kind;
	r->role = role;
	r->target_start_ns = target->start_ns;
	r->target_cgroup_id = target->cgroup_id;
	r->target_memcg_id = target->memcg_id;
	r->target_oom_score_adj = target->oom_score_adj;
	r->target_flags = target->flags;
	r->sender_tty[0] = 0;
#ifdef OOMTRACE_HAVE_TASK_OFFSETS
	u32 failed = 0;
	const void *sig_struct = oomtrace_read_ptr((const void *)bpf_get_current_task(), OFF_TASK_SIGNAL, &failed);
	const void *tty = sig_struct ? oomtrace_read_ptr(sig_struct, OFF_SIGNAL_TTY, &failed) : 0;
	if (tty)
		bpf_probe_read_kernel_str(r->sender_tty, sizeof(r->sender_tty), (const char *)tty + OFF_TTY_NAME);
#endif
	/* Copied now: the target may be reaped, and a sender script gone, before
	 * userspace reads the record. Without task offsets target->tgid is 0,
	 * which no entry has. */
	oomtrace_copy_argv(target->tgid, (struct oomtrace_argv *)&r->target_argv_size);
	oomtrace_copy_argv(sender.tgid, (struct oomtrace_argv *)&r->sender_argv_size);
	events.ringbuf_submit(r, 0);
	return 0;
}

#ifdef OOMTRACE_HAVE_TASK_OFFSETS
/*
 * The raw tracepoint (v4.17) passes what the plain one hides:
 * (int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
 * int result). The target task gives the victim's process, start time and
 * cgroups even if it never runs again; `info` tells kill(2) (a real siginfo)
 * from in-kernel senders such as cgroup.kill (SEND_SIG_NOINFO, i.e. NULL).
 * kernel_siginfo starts with si_signo, si_errno, si_code (three ints).
 */
RAW_TRACEPOINT_PROBE(signal_generate)
{
	int sig = (int)ctx->args[0];
	const void *info = (const void *)ctx->args[1];
	int errno_value = 0, code = 0;
	u32 info_kind;
	u32 role = oomtrace_signal_role(sig);

	if (!role)
		return 0;
	if (info == 0) {
		info_kind = OOMTRACE_INFO_NOINFO;
		code = 0; /* SI_USER */
	} else if (info == (const void *)1) {
		info_kind = OOMTRACE_INFO_PRIV;
		code = 0x80; /* SI_KERNEL */
	} else {
		info_kind = OOMTRACE_INFO_SIGINFO;
		bpf_probe_read_kernel(&errno_value, sizeof(errno_value), (const char *)info + 4);
		bpf_probe_read_kernel(&code, sizeof(code), (const char *)info + 8);
	}
	struct oomtrace_task_view target = {};
	oomtrace_read_task((const void *)ctx->args[2], &target);
	return oomtrace_signal_generated(sig, role, errno_value, code, (int)ctx->args[3],
					 (int)ctx->args[4], info_kind, &target);
}
#else
TRACEPOINT_PROBE(signal, signal_generate)
{
	int sig = args->sig;
	/* No stop is followed here (OOMTRACE_FOLLOW_STOPS needs task offsets). */
	u32 role = oomtrace_signal_role(sig);

	if (!role)
		return 0;
	struct oomtrace_task_view target = {};
	target.tid = args->pid;
	target.flags = OOMTRACE_TASK_NO_OFFSETS;
	__builtin_memcpy(target.comm, args->comm, OOMTRACE_COMM_LEN);
	return oomtrace_signal_generated(sig, role, args->errno, args->code, args->group,
					 args->result, OOMTRACE_INFO_UNKNOWN, &target);
}
#endif

#ifdef OOMTRACE_NEEDS_DELIVER
/* Every signal delivered on the node comes through here. What we track is
 * delivered as itself, or as SIGKILL once a fatal signal has begun the group
 * exit: anything else is dropped before the hash lookups, which cost more than
 * the rest of the program on the untraced path. */
static __always_inline bool oomtrace_deliver_wanted(int sig)
{
	return sig == OOMTRACE_SIGKILL || oomtrace_signal_traced(sig);
}

static __always_inline int oomtrace_signal_delivered(int sig, int code, u64 sa_handler)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	u32 tgid = pid_tgid >> 32;
	struct oomtrace_pending *p;

	/* kill(2) targets the leader (tid == tgid) but any thread may dequeue
	 * it; tgkill(2) targets one thread, which then receives it itself. */
	p = pending_signals.lookup(&tid);
	if (!p) {
		p = pending_signals.lookup(&tgid);
		if (!p)
			return 0;
	}
	struct oomtrace_pending kill = *p;
	pending_signals.delete(&tid);
	pending_signals.delete(&tgid);
	dying.update(&tgid, &kill);

	struct oomtrace_task_view victim = {};
	oomtrace_read_current(&victim);

	struct oomtrace_deliver_rec *r = oomtrace_reserve(sizeof(*r), OOMTRACE_REC_DELIVER);
	if (!r)
		return 0;
	OOMTRACE_STORE_TASK(r, victim, &victim);
	r->kill_ktime_ns = kill.ktime_ns;
	r->kill_sender_tgid = kill.sender_tgid;
	r->kill_sig = kill.sig;
	r->sig = sig;
	r->code = code;
	r->sa_handler = sa_handler;
	events.ringbuf_submit(r, 0);
	return 0;
}

#ifdef OOMTRACE_HAVE_TASK_OFFSETS
/*
 * The raw tracepoint (v4.17): (int sig, struct kernel_siginfo *info,
 * struct k_sigaction *ka). Unlike the plain one, no trace record is built
 * before the program runs, which is most of its cost on a signal we drop.
 * `info` is SEND_SIG_NOINFO (NULL) for a dying group's SIGKILL; the plain
 * tracepoint reports SI_USER for it, and so does this.
 */
RAW_TRACEPOINT_PROBE(signal_deliver)
{
	int sig = (int)ctx->args[0];
	const void *info = (const void *)ctx->args[1];
	int code = 0;
	u64 sa_handler = 0;

	if (!oomtrace_deliver_wanted(sig))
		return 0;
	if (info == (const void *)1)
		code = 0x80; /* SEND_SIG_PRIV: SI_KERNEL */
	else if (info)
		bpf_probe_read_kernel(&code, sizeof(code), (const char *)info + 8);
	bpf_probe_read_kernel(&sa_handler, sizeof(sa_handler),
			      (const char *)ctx->args[2] + OFF_KSIGACTION_HANDLER);
	return oomtrace_signal_delivered(sig, code, sa_handler);
}
#else
TRACEPOINT_PROBE(signal, signal_deliver)
{
	if (!oomtrace_deliver_wanted(args->sig))
		return 0;
	return oomtrace_signal_delivered(args->sig, args->code, (u64)args->sa_handler);
}
#endif
#endif /* OOMTRACE_NEEDS_DELIVER */

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	u32 tgid = pid_tgid >> 32;
	u32 group_dead;

#ifdef OOMTRACE_EXIT_HAS_GROUP_DEAD
	group_dead = args->group_dead;
#else
	group_dead = tid == tgid;
#endif
	if (!group_dead)
		return 0;
#ifdef OOMTRACE_HAVE_ARGV
	/* The process is gone: its command line was copied into any record of
	 * its kill already. */
	commands.delete(&tgid);
#endif
	struct oomtrace_pending *p = dying.lookup(&tgid);
	if (!p)
		return 0;
	struct oomtrace_pending kill = *p;
	dying.delete(&tgid);

	struct oomtrace_task_view victim = {};
	oomtrace_read_current(&victim);

	struct oomtrace_exit_rec *r = oomtrace_reserve(sizeof(*r), OOMTRACE_REC_EXIT);
	if (!r)
		return 0;
	OOMTRACE_STORE_TASK(r, victim, &victim);
	r->kill_ktime_ns = kill.ktime_ns;
	r->kill_sender_tgid = kill.sender_tgid;
	r->kill_sig = kill.sig;
	r->exit_code = 0;
#ifdef OOMTRACE_HAVE_TASK_OFFSETS
	/* do_exit() stores the code before this tracepoint fires. */
	bpf_probe_read_kernel(&r->exit_code, sizeof(r->exit_code),
			      (const char *)bpf_get_current_task() + OFF_TASK_EXIT_CODE);
#endif
	r->group_dead = group_dead;
	events.ringbuf_submit(r, 0);
	return 0;
}
