"""`sandbox export --format oci|systemd|k8s`, checked by the real tools.

OCI: crun (Debian's package) runs a container whose root filesystem is built here from
busybox-static, under the exported profile: an allowed call works, a refused one fails,
and the same refused call works without the profile (so the test can fail). systemd: the
unit passes `systemd-analyze verify` with nothing on stderr (its warnings exit 0). k8s:
the manifest validates against the Kubernetes API schema with kubernetes-validate in
strict mode (offline, its bundled schemas). What a target cannot express is in the output
and in a warning on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.policy.loader import load_policy, load_policy_text
from sandbox.testing import SANDBOX, write_policy
from sandbox.tools.export import export

REPO = Path(__file__).resolve().parents[1]
GUARD = 120.0
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
CRUN = shutil.which("crun")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def sandbox(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [*SANDBOX, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=GUARD
    )


def policy_file(tmp_path: Path, name: str, **body: Any) -> str:
    return write_policy(tmp_path, {"version": 1, "name": name, **body}, name)


# --------------------------------------------------------------------------- OCI, with crun


def _busybox_is_static() -> bool:
    from sandbox.tools.observe import interpreters

    return interpreters(os.path.realpath(BUSYBOX)) == []  # no PT_INTERP: no dynamic loader


needs_crun = pytest.mark.skipif(
    CRUN is None or os.geteuid() != 0 or not os.path.exists(BUSYBOX),
    reason="crun runs containers as root on this host (hybrid cgroups); needs crun and "
    "busybox-static (ci/setup installs them)",
)


def bundle(tmp_path: Path, profile: dict[str, Any] | None, args: list[str]) -> Path:
    """An OCI bundle: a root filesystem of busybox-static, the exported profile."""
    b = tmp_path / "bundle"
    if not b.exists():
        root = b / "rootfs"
        for d in ("bin", "etc", "tmp"):
            (root / d).mkdir(parents=True)
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        for applet in ("cat", "mkdir", "touch", "ls", "sh"):
            os.symlink("busybox", root / "bin" / applet)
        (root / "etc" / "hostname").write_text("inside-the-container\n")
        subprocess.run([CRUN or "crun", "spec"], cwd=b, check=True, timeout=GUARD)
    config = json.loads((b / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"]["readonly"] = False
    config["linux"].pop("seccomp", None)
    if profile is not None:
        config["linux"]["seccomp"] = profile
    (b / "config.json").write_text(json.dumps(config))
    return b


def crun(b: Path, name: str) -> subprocess.CompletedProcess[str]:
    # crun refuses a hybrid cgroup hierarchy with an (empty) v2 mount; in a private mount
    # namespace without it, crun sees plain v1 (see RESEARCH-machine.md, 4b).
    script = (
        "umount /sys/fs/cgroup/unified 2>/dev/null; "
        f"exec {CRUN} --cgroup-manager=disabled run {name}"
    )
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        cwd=b,
        capture_output=True,
        text=True,
        timeout=GUARD,
    )


@needs_crun
@pytest.mark.parametrize("violation", ["errno", "kill"])
def test_oci_profile_in_crun_allows_what_the_policy_allows(tmp_path: Path, violation: str) -> None:
    assert _busybox_is_static(), "the root filesystem needs a static busybox"
    pol = load_policy(policy_file(tmp_path, "oci", pledge="stdio rpath", violation=violation))
    profile = json.loads(export(pol, "oci").text)
    # Allowed: reading a file (openat read-only is rpath).
    ok = crun(bundle(tmp_path, profile, ["/bin/cat", "/etc/hostname"]), "t-ok")
    assert (ok.returncode, ok.stdout) == (0, "inside-the-container\n"), ok
    # Refused: creating a directory (cpath), and creating a file: openat is allowed for
    # reading only, so the argument check of the profile refuses O_CREAT|O_WRONLY.
    tmp = tmp_path / "bundle" / "rootfs" / "tmp"
    for args in (["/bin/mkdir", "/tmp/x"], ["/bin/touch", "/tmp/y"]):
        refused = crun(bundle(tmp_path, profile, args), f"t-no-{args[0][5:]}")
        if violation == "errno":
            assert refused.returncode == 1 and "Operation not permitted" in refused.stderr, refused
        else:
            assert refused.returncode == 128 + 31, refused  # SIGSYS: SCMP_ACT_KILL_PROCESS
    assert sorted(os.listdir(tmp)) == []
    # The other side: the same calls without the profile work (the test can fail).
    for args in (["/bin/mkdir", "/tmp/x"], ["/bin/touch", "/tmp/y"]):
        free = crun(bundle(tmp_path, None, args), f"t-free-{args[0][5:]}")
        assert free.returncode == 0, free
    assert sorted(os.listdir(tmp)) == ["x", "y"]


@needs_crun
def test_oci_profile_with_cpath_lets_the_container_create(tmp_path: Path) -> None:
    pol = load_policy(policy_file(tmp_path, "oci-c", pledge="stdio rpath wpath cpath"))
    profile = json.loads(export(pol, "oci").text)
    made = crun(bundle(tmp_path, profile, ["/bin/mkdir", "/tmp/made"]), "t-made")
    assert made.returncode == 0, made
    assert (tmp_path / "bundle" / "rootfs" / "tmp" / "made").is_dir()


def test_oci_profile_shape_and_what_it_cannot_express(tmp_path: Path) -> None:
    (tmp_path / "vault").mkdir()
    path = policy_file(
        tmp_path,
        "wide",
        pledge="stdio rpath inet exec vault:read",
        execpromises="stdio",
        unveil={"/usr": "rx"},
        network={"connect": [443], "bind": []},
        resources={"vault": {"type": "dir", "path": "vault"}},
        limits={"memory": "256MiB"},
    )
    p = sandbox("export", path, "--format", "oci")
    assert p.returncode == 0, p
    profile = json.loads(p.stdout)
    assert profile["defaultAction"] == "SCMP_ACT_KILL_PROCESS"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64"]
    allowed = {
        n for s in profile["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" for n in s["names"]
    }
    assert {"read", "openat", "socket", "connect", "execve"} <= allowed
    assert not {"mount", "bpf", "ptrace", "io_uring_setup"} & allowed
    # Argument conditions are kept: mmap without PROT_EXEC, as the filter does.
    mmap = [s for s in profile["syscalls"] if s["names"] == ["mmap"]]
    assert mmap and all(s.get("args") for s in mmap), mmap
    enosys = [s for s in profile["syscalls"] if s.get("errnoRet") == 38]
    assert any("openat2" in s["names"] for s in enosys), enosys
    notes = profile["x-outheis-sandbox"]["not_expressed"]
    for needle in ("vault:read", "execpromises", "unveil", "/usr:rx", "connect [443]", "limits"):
        assert any(needle in n for n in notes), (needle, notes)
        assert needle in p.stderr, (needle, p.stderr)
    assert p.stderr.count("sandbox export: warning: oci cannot express") == len(notes)


# --------------------------------------------------------------------------- systemd


def verify_unit(
    tmp_path: Path, text: str, name: str = "agent.service"
) -> subprocess.CompletedProcess[str]:
    unit = tmp_path / name
    unit.write_text(text)
    return subprocess.run(
        [SYSTEMD_ANALYZE or "systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=GUARD,
    )


needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze (package systemd; ci/setup installs it)"
)


def _policies(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "vault").mkdir(exist_ok=True)
    return {
        "readonly": policy_file(
            tmp_path,
            "readonly",
            command=["/usr/bin/grep", "-r", "x", "/srv"],
            pledge="stdio rpath",
            unveil={"@system": "rx", "/tmp": "r"},
        ),
        "networked": policy_file(
            tmp_path,
            "networked",
            command=["curl", "https://example.org/"],
            pledge="stdio rpath wpath cpath inet dns",
            unveil={
                "@system": "rx",
                str(tmp_path / "vault"): "rwc",
                "/no/such": {"perms": "r", "optional": True},
            },
            network={"connect": [443], "bind": [8080]},
            limits={
                "memory": "512MiB",
                "cpu": "1m",
                "wall": "10m",
                "processes": 16,
                "files": 256,
                "file_size": "1GiB",
            },
            env={"keep": ["LANG"], "set": {"A_VAR": "with space $x %h"}},
            violation="errno",
            qos="background",
        ),
        "broker": policy_file(
            tmp_path,
            "broker",
            command=["/usr/bin/python3", "agent.py"],
            pledge="stdio rpath exec proc vault:read",
            execpromises="stdio",
            unveil={"@system": "rx"},
            resources={"vault": {"type": "dir", "path": str(tmp_path / "vault")}},
            violation="log",
            user="daemon",
        ),
    }


@needs_systemd_analyze
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name, path in _policies(tmp_path).items():
        p = sandbox("export", path, "--format", "systemd")
        assert p.returncode == 0, p
        assert "[Service]" in p.stdout and "SystemCallFilter=" in p.stdout
        checked = verify_unit(tmp_path, p.stdout, f"{name}.service")
        # Unknown keys and bad values are warnings that exit 0: stderr must be empty.
        assert (checked.returncode, checked.stderr) == (0, ""), (name, checked, p.stdout)
    # The other side: a unit with a setting systemd does not know is reported.
    bad = verify_unit(
        tmp_path,
        p.stdout.replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nNoNewPrivilegez=yes"),
        "bad.service",
    )
    assert "Unknown key" in bad.stderr, bad


@needs_systemd_analyze
def test_presets_export_as_systemd_units(tmp_path: Path) -> None:
    (tmp_path / "downloads").mkdir()
    (tmp_path / "work").mkdir()
    for preset in ("readonly-tool", "python-no-network", "fetcher-443"):
        p = sandbox(
            "export", "--preset", preset, "--format", "systemd", "--", "/usr/bin/true", cwd=tmp_path
        )
        assert p.returncode == 0, p
        checked = verify_unit(tmp_path, p.stdout, f"{preset}.service")
        assert (checked.returncode, checked.stderr) == (0, ""), (preset, checked)


def test_systemd_unit_directives_follow_the_policy(tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    ro = export(load_policy(policies["readonly"]), "systemd")
    lines = ro.text.splitlines()
    filt = next(ln for ln in lines if ln.startswith("SystemCallFilter="))
    names = set(filt.removeprefix("SystemCallFilter=").split())
    assert {"read", "openat", "mmap"} <= names and not {"socket", "connect", "fork"} & names
    assert "PrivateNetwork=yes" in lines and "RestrictAddressFamilies=AF_UNIX" in lines
    assert "MemoryDenyWriteExecute=yes" in lines and "TemporaryFileSystem=/:ro" in lines
    assert any(ln.startswith("BindReadOnlyPaths=") and "/tmp" in ln for ln in lines)
    assert 'ExecStart="/usr/bin/grep" "-r" "x" "/srv"' in lines
    net = export(load_policy(policies["networked"]), "systemd")
    nl = net.text.splitlines()
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in nl
    assert "SystemCallErrorNumber=EPERM" in nl and "SocketBindAllow=tcp:8080" in nl
    assert "MemoryMax=536870912" in nl and "TasksMax=16" in nl and "RuntimeMaxSec=600" in nl
    assert any(ln.startswith("BindPaths=") and str(tmp_path / "vault") in ln for ln in nl)
    assert any("-/no/such" in ln for ln in nl)  # optional: ignored if missing
    assert 'Environment="A_VAR=with space $$x %%h"' in nl
    # A bare program name is resolved in the system's directories, not the caller's PATH.
    assert any(ln.startswith('ExecStart="/usr/bin/curl" ') for ln in nl), nl
    # Cannot be expressed, and said in the output.
    assert "connect is not limited by port" in net.text
    assert any("argument checks beyond SystemCallFilter=" in n for n in net.not_expressed)
    br = export(load_policy(policies["broker"]), "systemd")
    assert "User=daemon" in br.text.splitlines()
    for needle in ("vault:read", "execpromises", "violation: log"):
        assert any(needle in n for n in br.not_expressed), (needle, br.not_expressed)
        assert "# NOT EXPRESSED: " in br.text and needle in br.text


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_manifest_validates_against_the_api_schema(tmp_path: Path) -> None:
    import kubernetes_validate as kv

    for path in _policies(tmp_path).values():
        p = sandbox("export", path, "--format", "k8s", "--image", "registry.example/agent:1")
        assert p.returncode == 0, p
        docs = list(yaml.safe_load_all(p.stdout))
        assert [d["kind"] for d in docs] == ["ConfigMap", "Pod"]
        for doc in docs:
            kv.validate(doc, "1.33", strict=True)
        pod = docs[1]
        container = pod["spec"]["containers"][0]
        assert container["command"][:3] == ["sandbox", "run", "/etc/outheis-sandbox/policy.yaml"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["image"] == "registry.example/agent:1"
        # The policy travels in the ConfigMap and loads as it was (less what Kubernetes
        # enforces itself: memory, processes; and the user, which is the Pod's).
        embedded = load_policy_text(docs[0]["data"]["policy.yaml"], "policy.yaml", str(tmp_path))
        original = load_policy(path)
        assert embedded.pledge == original.pledge and embedded.capabilities == original.capabilities
        assert {u.path for u in embedded.unveil} == {u.path for u in original.unveil}
        assert embedded.limits.memory is None and embedded.user is None
        if original.limits.memory:
            assert container["resources"]["limits"]["memory"] == "512Mi"
            assert pod["spec"]["activeDeadlineSeconds"] == 600
            assert "limits.processes 16" in p.stdout and "limits.processes 16" in p.stderr
    # The other side: the validator refuses a typo in strict mode.
    docs[1]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(docs[1], "1.33", strict=True)


def test_k8s_manifest_validates_offline_with_the_cli(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    path = _policies(tmp_path)["networked"]
    out = tmp_path / "pod.yaml"
    p = sandbox("export", path, "--format", "k8s", "--out", str(out))
    assert p.returncode == 0, p
    # No network at all: the schemas are the package's own.
    v = subprocess.run(
        ["unshare", "-n", str(exe), "--strict", str(out)]
        if os.geteuid() == 0
        else [str(exe), "--strict", str(out)],
        capture_output=True,
        text=True,
        timeout=GUARD,
    )
    assert v.returncode == 0, v
    assert "passed for resource pod/networked" in v.stdout + v.stderr


def test_export_usage_errors(tmp_path: Path) -> None:
    path = _policies(tmp_path)["readonly"]
    for args in (
        ["export", path],
        ["export", path, "--format", "docker"],
        ["export", "--format", "oci"],
    ):
        p = sandbox(*args)
        assert p.returncode == 2 and p.stderr.strip(), (args, p)
