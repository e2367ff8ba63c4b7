"""A container image made offline from the host's static busybox, as a docker-archive tar.

docker-archive (what ``docker save`` writes) is the smallest format ``ctr images import``
reads: manifest.json, one image config, one uncompressed layer tar.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
# The applets containers here run; a symlink each, as `busybox --install` would make.
_APPLETS = ("sh", "sleep", "dd", "cat", "echo", "true", "false", "kill", "ps", "head", "yes")
# Directories runc needs as mount points or a shell expects.
_DIRS = ("bin", "dev", "etc", "proc", "sys", "tmp", "root")


def build_busybox_image(out: Path, reference: str) -> Path:
    """Write a docker-archive tar at ``out`` whose one image is tagged ``reference``.

    The image's default command sleeps forever, so it also serves as the sandbox (pause)
    image: a pause process only has to stay alive.
    """
    layer = _layer_tar()
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": _architecture(),
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin"],
                "Cmd": ["/bin/sleep", "2147483647"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
            "history": [{"created_by": "oomtrace tests: /bin/busybox"}],
        },
        sort_keys=True,
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    layer_name = f"{layer_digest}/layer.tar"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [reference], "Layers": [layer_name]}]
    ).encode()
    with tarfile.open(out, "w") as archive:
        _add_dir(archive, layer_digest)
        _add_file(archive, layer_name, layer)
        _add_file(archive, config_name, config)
        _add_file(archive, "manifest.json", manifest)
    return out


def _layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for name in _DIRS:
            _add_dir(layer, name, mode=0o1777 if name == "tmp" else 0o755)
        _add_file(layer, "bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in _APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            layer.addfile(link)
        _add_file(layer, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        _add_file(layer, "etc/group", b"root:x:0:\n")
    return buf.getvalue()


def _add_dir(archive: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    archive.addfile(info)


def _add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    archive.addfile(info, io.BytesIO(data))


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
