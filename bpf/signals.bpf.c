/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Signals: who sent a traced signal, and proof that its target received it
 * and died. Assembled after oomtrace.h and common.bpf.h.
 *
 * Kernel facts relied on (include/trace/events/signal.h, kernel/signal.c,
 * kernel/exit.c):
 *  - signal:signal_generate fires in the sender's context; its pid/comm are
 *    the TARGET thread's. The OOM killer's SIGKILL has code SI_KERNEL and is
 *    sent from the task whose allocation failed.
 *  - signal:signal_deliver fires in the receiving thread. A group SIGKILL
 *    (and any fatal signal) shows as SIGKILL in every thread, with no sender:
 *    it only tells which process received a kill we saw generated.
 *  - sched:sched_process_exit fires in the exiting thread for every thread
 *    on the node, so it is filtered here to processes we saw signalled.
 *    `group_dead` exists on recent kernels; without it (loader leaves
 *    OOMTRACE_EXIT_HAS_GROUP_DEAD undefined) the thread-group leader's exit
 *    stands for the process.
 * All three tracepoints exist since v3.x/v4.x; nothing here needs BTF, but
 * without it the task fields that walk task_struct stay empty.
 */

/* Bit n set: signal n is traced. Written by userspace (--signals); ordinary
 * signal traffic is dropped by the first test below. */
BPF_ARRAY(traced_signals, u64, 1);

struct oomtrace_pending {
	u64 ktime_ns;
	u32 sender_tgid;
	s32 sig;
};

/* Generated, not yet delivered: keyed by target thread id. LRU, so a
 * signal whose target never runs again cannot fill the map. */
BPF_TABLE("lru_hash", u32, struct oomtrace_pending, pending_signals, 16384);

/* Delivered, exit not yet seen: keyed by tgid. */
BPF_TABLE("lru_hash", u32, struct oomtrace_pending, dying, 16384);

TRACEPOINT_PROBE(signal, signal_generate)
{
	int sig = args->sig;
	u32 zero = 0;
	u64 *mask;

	if (sig <= 0 || sig >= 64)
		return 0;
	mask = traced_signals.lookup(&zero);
	if (!mask || !(*mask & (1ULL << sig)))
		return 0;

	struct oomtrace_task_view sender = {};
	oomtrace_read_current(&sender);
	/* The record and the pending entry share this timestamp: with the
	 * sender's tgid it links deliver and exit records back to this one. */
	u64 now = bpf_ktime_get_ns();

	/* Only a queued signal can be delivered; "ignored" and "already
	 * pending" results still go to userspace, but wait for nothing. */
	if (args->result == 0) {
		struct oomtrace_pending p = {};
		u32 target = args->pid;
		p.ktime_ns = now;
		p.sender_tgid = sender.tgid;
		p.sig = sig;
		pending_signals.update(&target, &p);
	}

	struct oomtrace_signal_rec *r = oomtrace_reserve(sizeof(*r), OOMTRACE_REC_SIGNAL);
	if (!r)
		return 0;
	r->ktime_ns = now;
	OOMTRACE_STORE_TASK(r, sender, &sender);
	r->target_tid = args->pid;
	r->sig = sig;
	r->errno_value = args->errno;
	r->code = args->code;
	r->group = args->group;
	r->result = args->result;
	__builtin_memcpy(r->target_comm, args->comm, OOMTRACE_COMM_LEN);
	events.ringbuf_submit(r, 0);
	return 0;
}

TRACEPOINT_PROBE(signal, signal_deliver)
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
	r->sig = args->sig;
	r->code = args->code;
	r->sa_handler = args->sa_handler;
	events.ringbuf_submit(r, 0);
	return 0;
}

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
