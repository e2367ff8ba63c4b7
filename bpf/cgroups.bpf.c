/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cgroup:cgroup_mkdir: learn each new cgroup's id and path as it is made,
 * so a victim is named even when its container's cgroup was removed before
 * userspace looked. Assembled after oomtrace.h and common.bpf.h.
 *
 * Kernel facts relied on (include/trace/events/cgroup.h): the tracepoint
 * exists since v4.13; `id` is cgroup_id() = the kernfs node id = the
 * directory's inode number; `root` is the hierarchy id (0 for cgroup v2,
 * as listed in /proc/cgroups for v1); `path` is relative to the hierarchy.
 * Without it, userspace keeps to its directory scans.
 */

TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
	struct oomtrace_cgroup_rec *r = oomtrace_reserve(sizeof(*r), OOMTRACE_REC_CGROUP_MKDIR);
	if (!r)
		return 0;
	r->hierarchy = args->root;
	r->level = args->level;
	r->cgroup_id = args->id;
	r->path[0] = 0;
	TP_DATA_LOC_READ_STR(r->path, path, OOMTRACE_CGROUP_PATH_LEN);
	events.ringbuf_submit(r, 0);
	return 0;
}
