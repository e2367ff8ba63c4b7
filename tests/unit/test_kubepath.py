"""Cgroup paths as the kubelet and the runtimes make them, parsed without any CRI."""

from __future__ import annotations

import pytest

from oomtrace.host.kubepath import KubeCgroup, parse_kube_cgroup

UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
UID_ = UID.replace("-", "_")
STATIC_UID = "6b3c4e0d1f2a3b4c5d6e7f8091a2b3c4"  # static pods: md5 of the manifest, no dashes
CID = "4f9c1e5ad2b7c8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708"
CID2 = "a" * 64


def kc(
    driver: str,
    qos: str,
    *,
    uid: str | None = UID,
    cid: str | None = CID,
    runtime: str | None = None,
    role: str = "container",
) -> KubeCgroup:
    return KubeCgroup(
        driver=driver, qos_class=qos, pod_uid=uid, container_id=cid, runtime=runtime, role=role
    )


CASES: list[tuple[str, KubeCgroup | None]] = [
    # --- cgroupfs driver (containerd, docker: bare id; CRI-O: crio-<id>) ---
    (f"/kubepods/besteffort/pod{UID}/{CID}", kc("cgroupfs", "BestEffort")),
    (f"/kubepods/burstable/pod{UID}/{CID}", kc("cgroupfs", "Burstable")),
    (f"/kubepods/pod{UID}/{CID}", kc("cgroupfs", "Guaranteed")),
    (f"/kubepods/burstable/pod{STATIC_UID}/{CID}", kc("cgroupfs", "Burstable", uid=STATIC_UID)),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", kc("cgroupfs", "Burstable", runtime="cri-o")),
    (
        f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}",
        kc("cgroupfs", "Burstable", cid=None, runtime="cri-o", role="conmon"),
    ),
    (f"/kubepods/burstable/pod{UID}", kc("cgroupfs", "Burstable", cid=None, role="pod")),
    (f"/kubepods/pod{UID}/", kc("cgroupfs", "Guaranteed", cid=None, role="pod")),
    ("/kubepods/besteffort", kc("cgroupfs", "BestEffort", uid=None, cid=None, role="qos")),
    ("/kubepods/burstable/", kc("cgroupfs", "Burstable", uid=None, cid=None, role="qos")),
    ("/kubepods", kc("cgroupfs", "", uid=None, cid=None, role="kubepods")),
    # --- systemd driver ---
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
        kc("systemd", "Burstable", runtime="containerd"),
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-{CID}.scope",
        kc("systemd", "BestEffort", runtime="cri-o"),
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-conmon-{CID}.scope",
        kc("systemd", "BestEffort", cid=None, runtime="cri-o", role="conmon"),
    ),
    (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope",
        kc("systemd", "Guaranteed", runtime="docker"),
    ),
    (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        kc("systemd", "Guaranteed", runtime="containerd"),
    ),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        kc("systemd", "Burstable", cid=None, role="pod"),
    ),
    (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/",
        kc("systemd", "Guaranteed", cid=None, role="pod"),
    ),
    (
        "/kubepods.slice/kubepods-besteffort.slice",
        kc("systemd", "BestEffort", uid=None, cid=None, role="qos"),
    ),
    ("/kubepods.slice", kc("systemd", "", uid=None, cid=None, role="kubepods")),
    # --- nesting below the container stays with the container ---
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"crio-{CID}.scope/container",
        kc("systemd", "Burstable", runtime="cri-o"),
    ),
    (f"/kubepods/burstable/pod{UID}/{CID}/init.scope", kc("cgroupfs", "Burstable")),
    (f"/kubepods/pod{UID}/{CID}/sub/deeper/", kc("cgroupfs", "Guaranteed")),
    # a nested kubelet (kind inside a pod): the outer pod is the one this node's CRI knows
    (
        f"/kubepods/burstable/pod{UID}/{CID}/kubelet/kubepods/besteffort/pod{STATIC_UID}/{CID2}",
        kc("cgroupfs", "Burstable"),
    ),
    # --- kubepods under a parent (--cgroup-root, kind nodes, docker-in-docker) ---
    (f"/kubelet/kubepods/besteffort/pod{UID}/{CID}", kc("cgroupfs", "BestEffort")),
    (f"/docker/{CID2}/kubepods/pod{UID}/{CID}", kc("cgroupfs", "Guaranteed")),
    (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        kc("systemd", "BestEffort", runtime="containerd"),
    ),
    (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
        kc("systemd", "Guaranteed", runtime="containerd"),
    ),
    # --- cgroup v1 forms: a mounted hierarchy's directory, a /proc/<pid>/cgroup line ---
    (f"/sys/fs/cgroup/memory/kubepods/burstable/pod{UID}/{CID}", kc("cgroupfs", "Burstable")),
    (
        f"/sys/fs/cgroup/cpu,cpuacct/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope",
        kc("systemd", "Guaranteed", runtime="cri-o"),
    ),
    (f"9:memory:/kubepods/besteffort/pod{UID}/{CID}", kc("cgroupfs", "BestEffort")),
    (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n",
        kc("systemd", "Burstable", runtime="containerd"),
    ),
    # --- unknown levels: stop at the deepest recognised one ---
    (
        f"/kubepods/burstable/pod{UID}/not-a-container",
        kc("cgroupfs", "Burstable", cid=None, role="pod"),
    ),
    (
        "/kubepods/burstable/podnot-a-uid/x",
        kc("cgroupfs", "Burstable", uid=None, cid=None, role="qos"),
    ),
    (f"/kubepods/burstable/pod{UID}/{CID[:12]}", kc("cgroupfs", "Burstable", cid=None, role="pod")),
    # --- host processes and other non-Kubernetes paths ---
    ("/system.slice/cron.service", None),
    ("/system.slice/containerd.service", None),
    ("/system.slice/kubelet.service", None),
    ("/user.slice/user-1000.slice/session-3.scope", None),
    ("/user.slice/user-0.slice/user@0.service/app.slice/htop.scope", None),
    (f"/system.slice/docker-{CID}.scope", None),
    (f"/docker/{CID}", None),
    ("/", None),
    ("", None),
    ("/kubepods-burstable.slice", None),
    ("/notkubepods/burstable", None),
]


@pytest.mark.parametrize(("path", "expected"), CASES, ids=[c[0][:90] for c in CASES])
def test_parse_kube_cgroup(path: str, expected: KubeCgroup | None) -> None:
    assert parse_kube_cgroup(path) == expected


def test_pod_uid_keeps_dashes_from_systemd_underscores() -> None:
    parsed = parse_kube_cgroup(f"/kubepods.slice/kubepods-pod{UID_}.slice")
    assert parsed is not None
    assert parsed.pod_uid == UID


def test_result_is_immutable() -> None:
    parsed = parse_kube_cgroup(f"/kubepods/pod{UID}/{CID}")
    assert parsed is not None
    with pytest.raises(AttributeError):
        parsed.role = "pod"  # type: ignore[misc]
