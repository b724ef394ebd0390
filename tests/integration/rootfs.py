"""A container filesystem without a Docker engine: a Debian root from Debian's packages, a Dockerfile replayed in it.

``debootstrap --variant=minbase`` builds Debian bookworm with ``python3``, ``python3-pip`` and ``ca-certificates``:
the stand-in for ``python:3.11-slim`` (the same Debian release and Python minor version; like that image it has
pip on PATH, no PEP 668 marker and no ``libgomp1``). :func:`replay` then runs the Dockerfile's instructions in
order: ``ENV`` and ``WORKDIR`` change the state, ``COPY`` copies from the build context (honouring
``.dockerignore``), ``RUN`` runs ``/bin/sh -c`` inside the root with ``chroot``. Each command runs in its own mount
namespace (``unshare --mount``), where ``/proc`` is mounted, so no mount outlives the command and deleting the
root can never reach the host.

What differs from ``docker build``: the Python is Debian's (``/usr/bin/python3``) rather than one built from
source in ``/usr/local``; the build host's CA bundle and proxy settings are handed to ``RUN`` steps (as a
``docker build`` behind the same proxy needs them); no layers, no user namespaces, the host's network.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_MIRROR = os.environ.get("SPCS_LLM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates")
# python:3.11-slim's own environment (docker-library/python): PATH with /usr/local/bin first, UTF-8 locale.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
HOST_CA = "/etc/ssl/certs/build-host-ca.crt"  # where the build host's CA bundle goes inside the root


def missing_prerequisites() -> str | None:
    """Why a root cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and mount namespaces)"
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install debootstrap)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace: {probe.stderr.decode(errors='replace').strip()}"
    return None


def build_base(root: Path, cache: Path | None = None) -> None:
    """Debian minbase + python3 into ``root``; a tarball in ``cache`` (if given) makes later runs skip debootstrap."""
    tarball = cache / f"{SUITE}-minbase-{'-'.join(BASE_PACKAGES)}.tar" if cache else None
    root.mkdir(parents=True)
    if tarball is not None and tarball.is_file():
        with tarfile.open(tarball) as tar:
            tar.extractall(root, filter="fully_trusted")
        return
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), DEBIAN_MIRROR],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    # python:*-slim has no EXTERNALLY-MANAGED marker: its pip installs into the system Python
    for marker in (root / "usr" / "lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    if tarball is not None:
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball.with_suffix(".tmp"), "w") as tar:
            tar.add(root, arcname=".")
        tarball.with_suffix(".tmp").replace(tarball)


def build_env() -> dict[str, str]:
    """What the build host gives RUN steps: its CA bundle (copied into the root) and its proxy settings."""
    env = {
        k: os.environ[k]
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
        if k in os.environ
    }
    if os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE"):
        env |= {"PIP_CERT": HOST_CA, "SSL_CERT_FILE": HOST_CA, "REQUESTS_CA_BUNDLE": HOST_CA}
    return env | {
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_DEFAULT_TIMEOUT": "180",
        "DEBIAN_FRONTEND": "noninteractive",
    }


def prepare_network(root: Path) -> None:
    """DNS and the build host's CA bundle, as a build container would get them."""
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if ca and Path(ca).is_file():
        shutil.copyfile(ca, root / HOST_CA.lstrip("/"))


@dataclass
class Mount:
    """A read-only bind mount of a host directory into the root, for one command."""

    host: Path
    inside: str


def chroot_argv(
    root: Path, argv: list[str], env: dict[str, str], workdir: str = "/", mounts: tuple[Mount, ...] = ()
) -> list[str]:
    """``argv`` run in ``root`` with exactly ``env``, in a private mount namespace with /proc mounted."""
    setup = [f"mount -t proc proc {shlex.quote(str(root / 'proc'))}"]
    for m in mounts:
        target = shlex.quote(str(root / m.inside.lstrip("/")))
        setup += [
            f"mkdir -p {target}",
            f"mount --bind {shlex.quote(str(m.host))} {target}",
            f"mount -o remount,bind,ro {target}",
        ]
    inner = shlex.join(
        [
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            "/bin/sh",
            "-c",
            f"cd {shlex.quote(workdir)} && exec {shlex.join(argv)}",
        ]
    )
    script = " && ".join(setup) + f" && exec chroot {shlex.quote(str(root))} {inner}"
    return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs; comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in dockerfile.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        op, _, arg = text.partition(" ")
        out.append((op.upper(), arg.strip()))
    return out


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for p in patterns:
        p = p.removeprefix("**/")
        if fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts):
            return True
        if rel.startswith(p.rstrip("/") + "/"):
            return True
    return False


@dataclass
class Image:
    root: Path
    base: str = ""
    env: dict[str, str] = field(default_factory=lambda: dict(BASE_ENV))
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    exposed: list[int] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def replay(
    dockerfile: str, context: Path, root: Path, *, mounts: tuple[Mount, ...] = (), timeout_s: float = 900
) -> Image:
    """Run the Dockerfile's instructions in ``root``; a failing RUN raises with its output."""
    patterns = []
    if (context / ".dockerignore").is_file():
        patterns = [
            p.strip()
            for p in (context / ".dockerignore").read_text().splitlines()
            if p.strip() and not p.startswith("#")
        ]
    image = Image(root)
    for op, arg in instructions(dockerfile):
        if op == "FROM":
            image.base = arg
        elif op == "ENV":
            image.env.update(dict(item.split("=", 1) for item in shlex.split(arg)))
        elif op == "WORKDIR":
            image.workdir = os.path.join(image.workdir, arg)
            (root / image.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(arg)
            target = root / os.path.join(image.workdir, dest).lstrip("/")
            for src in sources:
                _copy(context, src, target, patterns, many=len(sources) > 1)
        elif op == "RUN":
            argv = chroot_argv(root, ["/bin/sh", "-c", arg], image.env | build_env(), image.workdir, mounts)
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
            image.log.append(f"RUN {arg}\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
            if done.returncode != 0:
                raise RuntimeError(
                    f"RUN {arg} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
                )
        elif op == "EXPOSE":
            image.exposed += [int(p.split("/")[0]) for p in arg.split()]
        elif op == "ENTRYPOINT":
            image.entrypoint = json.loads(arg)
        else:
            raise ValueError(f"the replay does not know Dockerfile instruction {op}")
    return image


def _copy(context: Path, src: str, dest: Path, patterns: list[str], *, many: bool) -> None:
    source = context / src
    if source.is_dir():  # Docker copies a directory's contents into the destination
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(context).as_posix()
            if path.is_file() and not ignored(rel, patterns):
                target = dest / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        return
    if ignored(src, patterns):
        raise FileNotFoundError(f"COPY {src}: excluded by .dockerignore")
    target = dest / source.name if (many or str(dest).endswith("/") or dest.is_dir()) else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
