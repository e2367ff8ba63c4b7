"""Which cgroup mount the agent reads, from the mountinfo of a node and of a pod."""

from __future__ import annotations

from pathlib import Path

from oomtrace.host.cgroupfs import CgroupPaths

# A pod on cgroup v2 (private cgroup namespace): the runtime mounts the container's
# own cgroup at /sys/fs/cgroup, then the DaemonSet's hostPath mount of the node's
# /sys/fs/cgroup goes over it, its root shown as the way up from the namespace.
POD = (
    "1301 1290 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw\n"
    "1320 1290 0:27 /../../../.. /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime master:9 "
    "- cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
)
# The same when the runtime replaces its own /sys/fs/cgroup with the volume.
POD_BIND_ONLY = POD.splitlines(keepends=True)[1]
NODE = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n"
# A bind mount of a subtree elsewhere (a kubelet volume) does not hide the whole tree.
NODE_WITH_BIND = NODE + (
    "88 35 0:30 /kubepods.slice /mnt/pods rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
)


def paths(tmp_path: Path, text: str) -> CgroupPaths:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(text)
    cgroups = tmp_path / "cgroups"
    cgroups.write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t90\t1\n")
    return CgroupPaths(mountinfo, cgroups)


def test_in_a_pod_the_nodes_tree(tmp_path: Path) -> None:
    scope = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope"
    for text in (POD, POD_BIND_ONLY):
        unified = paths(tmp_path, text).unified
        assert unified is not None
        assert unified.root == "/"
        # Kernel paths (cgroup_mkdir's) are absolute: below the node's tree as they are.
        assert unified.dir_of(scope) == Path("/sys/fs/cgroup" + scope)


def test_on_a_node_the_whole_hierarchy(tmp_path: Path) -> None:
    for text in (NODE, NODE_WITH_BIND):
        unified = paths(tmp_path, text).unified
        assert unified is not None
        assert (unified.mount, unified.root) == (Path("/sys/fs/cgroup"), "/")
