"""A promise brings its files (SPEC section 5): `dns` its resolver files, `stdio` /dev/null and
the time zone files, `getpw` passwd and group, `tty` /dev/tty. An agent that holds the
promise but not `rpath` gets them opened by the parent (the descriptor injected with
SECCOMP_IOCTL_NOTIF_ADDFD), and the stat/access calls libc makes on them answered, so the
promise works by itself: real getaddrinfo, getpwnam, tzset/localtime and open("/dev/tty")
without rpath. Any other file stays a violation that names rpath.

The agents are Python: they import what they need, then pledge without rpath (a
dynamically linked program needs rpath for its loader before it runs at all).
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from progs.kit import PY, ROOT, Box, agent, assert_clean, make_box, results, sandboxed, show

from sandbox.testing import write_policy


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path)


def _policy(box: Box, violation: str = "errno") -> dict[str, Any]:
    return {
        "version": 1,
        "lock": "agent",
        "pledge": "stdio rpath wpath getpw dns inet tty vminfo unveil",
        "unveil": {str(box.x): "rx"},
        "violation": violation,
    }


def _after_pledge(promises: str, body: str) -> str:
    """Import first (the interpreter needs rpath), then pledge without it, then `body`."""
    return textwrap.dedent(
        f"""
        import pwd, grp, socket, time, encodings.idna, sandbox
        sandbox.pledge({promises!r})
        """
    ) + textwrap.dedent(body)


def _run(box: Box, promises: str, body: str, violation: str = "errno") -> Any:
    return sandboxed(
        box, agent(_after_pledge(promises, body)), promises=None, policy=_policy(box, violation)
    )


def _brought(r: Any) -> list[tuple[str, str]]:
    return [(o["resource"], o["path"]) for o in r.ops if o["decision"] == "allow"]


def test_getpw_without_rpath(box: Box) -> None:
    """getpwnam and getgrgid read /etc/passwd, /etc/group and nsswitch.conf: brought by
    'getpw'. /etc/shadow (not brought) is refused: EPERM and a violation naming rpath."""
    body = """
    report(home=pwd.getpwnam("root").pw_dir, group=grp.getgrgid(0).gr_name)
    report(shadow=attempt(os.open, "/etc/shadow", os.O_RDONLY))
    """
    r = _run(box, "stdio getpw", body)
    got = results(r.stdout)
    assert r.status == 0 and got == {"home": "/root", "group": "root", "shadow": "EPERM"}, show(r)
    assert ("getpw", "/etc/passwd") in _brought(r) and ("getpw", "/etc/group") in _brought(r)
    assert [v["promise"] for v in r.violations if "/etc/shadow" in v["args"]] == ["rpath"]


def test_getpw_is_needed(box: Box) -> None:
    """The control: without 'getpw' (and without rpath) the same lookup is refused and the
    violation names what is missing."""
    r = _run(box, "stdio", 'report(home=attempt(lambda: pwd.getpwnam("root").pw_dir))', "kill")
    assert r.status == 159 and "home" not in results(r.stdout), show(r)
    assert "pledge violation" in r.stderr and r.violations, r.stderr


def test_dns_without_rpath(box: Box) -> None:
    """getaddrinfo("localhost") under `stdio dns inet` (issue 8: killed at
    newfstatat("/etc/nsswitch.conf") before): nsswitch.conf, host.conf, resolv.conf and
    hosts are brought by 'dns', their stat calls answered."""
    body = 'report(addrs=sorted({a[4][0] for a in socket.getaddrinfo("localhost", 80)}))'
    r = _run(box, "stdio dns inet", body)
    got = assert_clean(r)
    assert "127.0.0.1" in got["addrs"], show(r)
    paths = {p for _, p in _brought(r)}
    assert {"/etc/nsswitch.conf", "/etc/hosts"} <= paths, r.ops
    assert any(o["op"] in ("newfstatat", "stat", "statx") for o in r.ops), r.ops


def test_stdio_brings_dev_null_and_the_time_zone(box: Box) -> None:
    """stdio alone: /dev/null opens read-write (shell redirections open it O_CREAT|O_TRUNC,
    a no-op on an existing device), and tzset/localtime read the zone files."""
    zone = "Europe/Berlin" if Path("/usr/share/zoneinfo/Europe/Berlin").exists() else "Etc/UTC"
    body = f"""
    fd = os.open("/dev/null", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    report(null=os.write(fd, b"x"), cloexec=not os.get_inheritable(fd))
    os.environ["TZ"] = ":/usr/share/zoneinfo/{zone}"
    time.tzset()
    t = time.localtime(15_000_000)
    report(zone=time.strftime("%Z", t), offset=t.tm_gmtoff)
    report(hostname=attempt(os.open, "/etc/hostname", os.O_RDONLY))
    """
    r = _run(box, "stdio", body)
    got = results(r.stdout)
    want_offset = 3600 if zone == "Europe/Berlin" else 0
    assert got["null"] == 1 and got["cloexec"] is True, show(r)
    assert got["offset"] == want_offset and got["zone"] in ("CET", "UTC"), got
    assert got["hostname"] == "EPERM", got
    assert ("stdio", "/dev/null") in _brought(r)


def test_opening_brought_files_for_writing_needs_their_letter(box: Box) -> None:
    """/etc/passwd is brought read-only: opening it for writing stays a violation."""
    body = 'report(w=attempt(os.open, "/etc/passwd", os.O_WRONLY))'
    r = _run(box, "stdio getpw", body)
    assert results(r.stdout) == {"w": "EPERM"}, show(r)
    assert r.violations and r.violations[0]["promise"] in ("wpath", "rpath wpath"), r.violations


def test_vminfo_brings_its_proc_files(box: Box) -> None:
    body = 'report(mem=open("/proc/meminfo").readline().split(":")[0])'
    r = _run(box, "stdio vminfo", body)
    assert assert_clean(r) == {"mem": "MemTotal"}, show(r)


def test_a_symlink_to_a_brought_file_is_followed_not_its_name_trusted(box: Box) -> None:
    """What is brought is the file a path reaches, not a name: a symlink the agent made
    to /etc/passwd reaches it; a symlink named like a brought file but pointing elsewhere
    does not."""
    (box.x / "pw").symlink_to("/etc/passwd")
    (box.x / "passwd").symlink_to("/etc/hostname")
    body = f"""
    report(pw=attempt(lambda: len(open({str(box.x / "pw")!r}).read()) > 0),
           fake=attempt(lambda: open({str(box.x / "passwd")!r}).read()))
    """
    r = _run(box, "stdio getpw", body)
    assert results(r.stdout) == {"pw": "ok", "fake": "EPERM"}, show(r)


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid")
def test_tty_brings_dev_tty(box: Box, tmp_path: Path) -> None:
    """/dev/tty is the controlling terminal: the agent runs under a pseudo-terminal and
    writes to /dev/tty without rpath or wpath; without a terminal the parent answers what
    the kernel would (ENXIO)."""
    body = """
    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    os.write(fd, b"TTY-REACHED\\n")
    report(tty="ok")
    """
    policy = write_policy(box.run, {**_policy(box), "name": "ttytest"}, "ttytest")
    log = box.run / "tty.jsonl"
    argv = [PY, "-m", "sandbox", "run", policy, "--audit-log", str(log), "--",
            *agent(_after_pledge("stdio tty", body))]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child on the terminal
        os.chdir(box.run)
        os.execve(PY, argv, env)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "TTY-REACHED" in text and 'RESULT {"tty": "ok"}' in text, text
    # Without a controlling terminal: ENXIO, as the kernel says.
    r = subprocess.run(
        ["setsid", PY, "-m", "sandbox", "run", policy, "--audit-log", str(log), "--",
         *agent(_after_pledge("stdio tty", 'report(tty=attempt(os.open, "/dev/tty", os.O_RDWR))'))],
        capture_output=True, text=True, env=env, cwd=box.run, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert results(r.stdout) == {"tty": "ENXIO"}, r


def test_with_rpath_nothing_goes_through_the_parent(box: Box) -> None:
    """An agent that holds rpath opens the files itself (they are unveiled read-only):
    no op records, no performer."""
    body = 'report(home=pwd.getpwnam("root").pw_dir)'
    r = sandboxed(
        box,
        agent("import pwd\n" + body),
        promises="stdio rpath getpw",
    )
    assert assert_clean(r) == {"home": "/root"} and r.ops == [], show(r)


def test_the_brought_files_are_in_the_promise_table() -> None:
    """One table: `sandbox promises` lists them with the promise."""
    p = subprocess.run([PY, "-m", "sandbox", "promises"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert p.returncode == 0
    assert "/dev/null:rw" in p.stdout and "/etc/resolv.conf:r" in p.stdout, p.stdout


def test_the_router_and_the_decisions_agree() -> None:
    """notify.py routes without importing perform.py (its import would cost every launch):
    its two sets must name what perform.py decides."""
    from sandbox.parent import notify, perform

    assert set(perform.BROUGHT_CALLS) == notify.BRINGING
    assert set(perform.HANDLER_SUMMARY) == notify.PERFORMED
