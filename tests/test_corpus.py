"""The corpus: real programs from Debian's packages doing small real tasks under the tightest
policy that fits (issue 9, "How it is shown").

Each task runs in a work directory of its own, as root and as the unprivileged test user
(`sandboxtest`, through tests/progs/asuser.py), to completion; the host then checks what it
made (files, modes, times, output). Each task has its control: the same task with one
promise or one unveil less, refused, with the message that names what was taken away (the
violation line and record for a promise; for a path or a port, the `denied` record and its
line, read by the parent with --trace-unveil, which works for every user; as root with
kernel audit on, tests/test_corpus_fixes.py reads the same refusals from Landlock's own
records).

The policies are data (RECIPES), printed as the README's "Recipes" table; a test keeps the
two the same.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import random
import shutil
import sqlite3
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from progs.corpus import (
    ROOT,
    VIOLATION_EXIT,
    WHO,
    Recipe,
    Work,
    done,
    mode,
    mtime,
    needs_program,
    refused_naming_path,
    refused_naming_port,
    refused_naming_promise,
    work_dir,
)

from sandbox.enforce import landlock

pytestmark = pytest.mark.skipif(landlock.abi_version() < 4, reason="kernel lacks Landlock TCP")

T2001 = 981173106  # 2001-02-03 04:05:06 UTC
T1999 = 915148800  # 1999-01-01 00:00:00 UTC


@pytest.fixture(params=WHO)
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Work]:
    yield from work_dir(request, tmp_path)


# --- the recipes: task -> policy (data) ---------------------------------------------------

FS = "stdio rpath wpath cpath"
RECIPES: Mapping[str, Recipe] = {
    "cp": Recipe(
        "`cp src/a.txt dst/`",
        FS,
        {"src": "r", "dst": "rwc"},
        needs="creating the copy needs `c` on the target directory; the clone ioctl "
        "cp tries first (FICLONE) is `wpath`'s",
    ),
    "cp-p-r": Recipe(
        "`cp -p -r src/tree dst/`: modes, times, a symlink, a setuid file",
        f"{FS} fattr",
        {"src": "r", "dst": "rwc"},
        needs="`fattr` for the modes, times and owner it copies (`utimensat`, `fchmod`, "
        "`fchown` to its own ids); the setuid bit is stripped",
    ),
    "mv": Recipe(
        "`mv inbox/a.txt inbox/sub outbox/` (a rename, two unveiled directories)",
        FS,
        {"inbox": "rwc", "outbox": "rwc"},
        needs="`c` on both sides (Landlock's `refer` and remove/make rights)",
    ),
    "tar-czf": Recipe(
        "`tar czf out/tree.tgz -C src tree`",
        f"{FS} proc exec getpw",
        {"src": "r", "out": "rwc"},
        needs="`proc exec` to run gzip; `getpw` for the owner names it stores",
    ),
    "tar-xzpf": Recipe(
        "`tar xzpf out/tree.tgz -C dst`: modes and times restored",
        f"{FS} fattr proc exec getpw",
        {"out/tree.tgz": "r", "dst": "rwc"},
        needs="`fattr` for modes and times, `proc exec` for gzip, `getpw` for owner names",
    ),
    "git": Recipe(
        "`git init/add/commit/diff/log`, then a local `git clone`",
        f"{FS} fattr proc exec getpw",
        {"git.sh": "r", "home": "r", "repo": "rwc", "clone": "rwc"},
        env={"HOME": "{work}/home", "GIT_CONFIG_NOSYSTEM": "1"},
        needs="a HOME it may read (`~/.gitconfig` with `user.name`/`user.email`: an EACCES "
        "on it is fatal to git, and without an identity git asks DNS for the host's name); "
        "`GIT_CONFIG_NOSYSTEM=1` (or `/etc/gitconfig: r`); `fattr` (hooks, `core.filemode` "
        "probe); `proc exec` (clone runs `git-upload-pack`); `/dev/urandom`, which `stdio` "
        "brings",
    ),
    "venv-pip": Recipe(
        "`python3 -m venv venvs/v`, then `venvs/v/bin/python -m pip install --no-index "
        "--find-links wheels tiny` (a wheel built by the test)",
        f"{FS} fattr proc exec getpw",
        {
            "venvs": "rwc",
            "tmp": "rwc",
            "wheels": "r",
            "/etc/debian_version": "r",
            "/etc/mime.types": "r",
        },
        env={
            "TMPDIR": "{work}/tmp",
            "PIP_CONFIG_FILE": "/dev/null",
            "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        },
        violation="errno",
        optional=frozenset({"/etc/debian_version", "/etc/mime.types"}),
        needs="`violation: errno`: pip's urllib3 probes IPv6 with a socket even with "
        "`--no-index` (refused, recorded, and pip goes on); a TMPDIR (ensurepip unpacks "
        "there); `/etc/debian_version` and `/etc/mime.types`, which pip reads and on which "
        "EACCES (not ENOENT, as unveil(2) would answer) is fatal; run pip as `python -m pip`: "
        "the venv is writable, so mounted noexec, and its `python` is a link to "
        "/usr/bin/python3",
    ),
    "gcc": Recipe(
        "`gcc -O2 -o out/hello hello.c` (default linker), then `out/hello` in a sandbox of its own",
        f"{FS} fattr proc exec",
        {"hello.c": "r", "out": "rwc", "tmp": "rwc"},
        env={"TMPDIR": "{work}/tmp"},
        needs="a TMPDIR (or `/tmp: rwc` or `tmppath`) for cc1's and as's files; `fattr` for "
        "the linker's `chmod 0755`; the result runs elsewhere: `out` is writable, so noexec",
    ),
    "g++": Recipe(
        "`g++ -O2 -o out/hello hello.cc` (libstdc++), then `out/hello`",
        f"{FS} fattr proc exec",
        {"hello.cc": "r", "out": "rwc", "tmp": "rwc"},
        env={"TMPDIR": "{work}/tmp"},
        needs="as gcc",
    ),
    "run-result": Recipe(
        "running what gcc/g++ built",
        "stdio rpath",
        {"out/hello": "rx"},
        needs="`rpath` for the dynamic loader (libc, libstdc++, `/etc/ld.so.preload`)",
    ),
    "make": Recipe(
        "`make -C proj` (two objects and a link)",
        f"{FS} fattr proc exec",
        {"proj": "rwc", "tmp": "rwc"},
        env={"TMPDIR": "{work}/tmp"},
        needs="as gcc, and `exec` for its recipes; GNU make's `seteuid(geteuid())` around "
        "each job changes nothing and is answered by the parent (no `id`)",
    ),
    "sqlite3": Recipe(
        "`sqlite3 db/t.db` in WAL mode: create, insert, select",
        f"{FS} flock fattr getpw",
        {"db": "rwc"},
        needs="`flock` (fcntl locks), `c` for the `-wal` and `-shm` files, `getpw` (the shell "
        "looks up its home for `~/.sqliterc`), `fattr` as root only (it gives the journal "
        "the database's owner)",
    ),
    "sed-i": Recipe(
        "`sed -i s/beta/gamma/ d/f.txt`",
        f"{FS} fattr",
        {"d": "rwc"},
        needs="`c` on the directory (a temporary file renamed over the original), `fattr` "
        "(it gives the copy the original's mode and owner)",
    ),
    "sort-T": Recipe(
        "`sort -S 1M -T tmp -o out/sorted.txt in.txt` on 3 MB (temporary files)",
        FS,
        {"in.txt": "r", "tmp": "rwc", "out": "rwc"},
        needs="`c` on the directory given to `-T`",
    ),
    "curl": Recipe(
        "`curl -q -sS -o dl/c.txt http://127.0.0.1:PORT/file.txt` (a server of the test)",
        f"{FS} inet",
        {"dl": "rwc"},
        network={"connect": ["{port}"]},
        needs="`inet` and the server's port in `network.connect`; `-q` skips ~/.curlrc, "
        "which curl otherwise looks up through getpwuid (`getpw`)",
    ),
    "wget": Recipe(
        "`wget -q -P dl http://127.0.0.1:PORT/file.txt`",
        f"{FS} fattr inet",
        {"dl": "rwc", "/etc/wgetrc": "r"},
        network={"connect": ["{port}"]},
        optional=frozenset({"/etc/wgetrc"}),
        needs="`fattr`: it sets the file's time from Last-Modified; `/etc/wgetrc`",
    ),
    "node": Recipe(
        "`node prog.js` with its JIT (writes out/result.json)",
        f"{FS} jit thread",
        {"prog.js": "r", "out": "rwc", "/etc/ssl/openssl.cnf": "r"},
        optional=frozenset({"/etc/ssl/openssl.cnf"}),
        needs="`jit` (V8 maps its code read-write-execute), `thread` (its worker threads), "
        "`/etc/ssl/openssl.cnf` (EACCES on it is a fatal OpenSSL configuration error)",
    ),
    "bash": Recipe(
        "`bash job.sh`: pipelines, `$(...)`, `while read`, `tee`, awk",
        f"{FS} proc exec getpw tty",
        {"job.sh": "r", "data": "r", "out": "rwc"},
        needs="`proc exec` for its pipelines, `getpw` (it looks up its user), `tty` (it asks "
        "stderr for the terminal's process group even in a script; OpenBSD's ksh pledges "
        "`tty` too)",
    ),
}


def recipes_markdown() -> str:
    """The README's Recipes table and notes, from RECIPES."""
    lines = ["| task | pledge | unveil (beside `@system: rx`) | also |", "|---|---|---|---|"]
    for name, r in RECIPES.items():
        unveil = ", ".join(
            f"`{p}: {perms}`" + (" (optional)" if p in r.optional else "")
            for p, perms in r.unveil.items()
        )
        also = []
        if r.env:
            also.append("env " + ", ".join(f"`{k}={v}`" for k, v in r.env.items()))
        for key, ports in (r.network or {}).items():
            shown = ", ".join(str(p).replace("{port}", "PORT") for p in ports)
            also.append(f"`network.{key}: [{shown}]`")
        if r.violation != "kill":
            also.append(f"`violation: {r.violation}`")
        task = r.task.replace("|", "\\|")
        lines.append(f"| **{name}**: {task} | `{r.pledge}` | {unveil} | {'; '.join(also)} |")
    lines += ["", "What each needs, and why:", ""]
    lines += [f"- **{name}**: {r.needs}." for name, r in RECIPES.items()]
    return "\n".join(lines)


# --- coreutils ----------------------------------------------------------------------------


def test_cp(work: Work) -> None:
    work.write("src/a.txt", "alpha\n" * 1000)
    work.mkdir("dst")
    cmd = ["cp", "src/a.txt", "dst/"]
    done(work.run(RECIPES["cp"], cmd))
    assert (work.dir / "dst/a.txt").read_text() == "alpha\n" * 1000
    (work.dir / "dst/a.txt").unlink()

    # Control: without 'c' on the target directory cp cannot create the copy.
    r = work.run(RECIPES["cp"].letters("dst", "rw"), cmd, trace=True)
    assert r.status == 1 and "cannot create regular file" in r.stderr, r
    refused_naming_path(r, work.dir / "dst", f"add '{work.dir / 'dst'}: rwc'")
    assert not (work.dir / "dst/a.txt").exists()


def test_cp_p_r(work: Work) -> None:
    work.write("src/tree/data.txt", "data", mode=0o640)
    work.write("src/tree/bin/tool", "#!/bin/sh\necho tool\n", mode=0o750)
    work.write("src/tree/suid", "x", mode=0o4755)
    (work.dir / "src/tree/link").symlink_to("data.txt")
    (work.dir / "src/tree/bin").chmod(0o710)
    work.mkdir("dst")
    for p in sorted((work.dir / "src/tree").rglob("*"), reverse=True):
        os.utime(p, (T2001, T2001), follow_symlinks=False)
    os.utime(work.dir / "src/tree", (T1999, T1999))
    work.own_all()
    cmd = ["cp", "-p", "-r", "src/tree", "dst/"]
    done(work.run(RECIPES["cp-p-r"], cmd))
    out = work.dir / "dst/tree"
    assert (mode(out / "data.txt"), mode(out / "bin/tool"), mode(out / "bin")) == (
        0o640,
        0o750,
        0o710,
    )
    assert mode(out / "suid") == 0o755  # setuid stripped, the rest kept
    assert os.readlink(out / "link") == "data.txt"
    assert all(mtime(p) == T2001 for p in out.rglob("*")), [(p, mtime(p)) for p in out.rglob("*")]
    assert mtime(out) == T1999
    assert (out / "bin/tool").stat().st_uid == (work.dir / "src/tree/bin/tool").stat().st_uid
    shutil.rmtree(out)

    # Control: without 'fattr', cp -p cannot keep times and modes.
    r = work.run(RECIPES["cp-p-r"].without("fattr"), cmd)
    refused_naming_promise(r, "fattr")


def test_mv_between_two_unveiled_directories(work: Work) -> None:
    work.write("inbox/a.txt", "moved")
    work.write("inbox/sub/b.txt", "moved too")
    work.mkdir("outbox")
    inodes = {n: (work.dir / "inbox" / n).stat().st_ino for n in ("a.txt", "sub")}
    cmd = ["mv", "inbox/a.txt", "inbox/sub", "outbox/"]
    done(work.run(RECIPES["mv"], cmd))
    assert (work.dir / "outbox/a.txt").read_text() == "moved"
    assert (work.dir / "outbox/sub/b.txt").read_text() == "moved too"
    assert not list((work.dir / "inbox").iterdir())
    # A rename, not a copy: the same inodes.
    assert {n: (work.dir / "outbox" / n).stat().st_ino for n in inodes} == inodes
    for n in inodes:
        (work.dir / "outbox" / n).rename(work.dir / "inbox" / n)

    # Control: without 'c' on the source, the entries cannot leave it.
    r = work.run(RECIPES["mv"].letters("inbox", "rw"), cmd, trace=True)
    assert r.status == 1 and "Permission denied" in r.stderr, r
    refused_naming_path(r, work.dir / "inbox", f"add '{work.dir / 'inbox'}: rwc'")
    assert (work.dir / "inbox/a.txt").exists()


def test_tar_czf_then_xzpf_with_times_and_modes(work: Work) -> None:
    work.write("src/tree/run.sh", "#!/bin/sh\necho hi\n", mode=0o750)
    work.write("src/tree/notes/n.txt", "notes", mode=0o604)
    work.write("src/tree/suid", "x", mode=0o4711)
    (work.dir / "src/tree/notes").chmod(0o750)
    work.mkdir("out", "dst")
    for p in [*sorted((work.dir / "src/tree").rglob("*"), reverse=True), work.dir / "src/tree"]:
        os.utime(p, (T2001, T2001))
    done(work.run(RECIPES["tar-czf"], ["tar", "czf", "out/tree.tgz", "-C", "src", "tree"]))
    with tarfile.open(work.dir / "out/tree.tgz", "r:gz") as t:
        members = {m.name: m for m in t.getmembers()}
    assert members["tree/run.sh"].mode == 0o750 and members["tree/run.sh"].mtime == T2001
    assert members["tree/suid"].mode == 0o4711  # archived as it is; extraction strips it

    cmd = ["tar", "xzpf", "out/tree.tgz", "-C", "dst"]
    done(work.run(RECIPES["tar-xzpf"], cmd))
    out = work.dir / "dst/tree"
    got = {p.relative_to(out).as_posix(): (mode(p), mtime(p)) for p in out.rglob("*")}
    assert got == {
        "run.sh": (0o750, T2001),
        "notes": (0o750, T2001),
        "notes/n.txt": (0o604, T2001),
        "suid": (0o711, T2001),
    }, got
    assert mtime(out) == T2001
    assert work.host(["sh", "dst/tree/run.sh"]).stdout == "hi\n"
    shutil.rmtree(out)

    # Control: without 'fattr', tar x -p cannot restore modes and times.
    r = work.run(RECIPES["tar-xzpf"].without("fattr"), cmd)
    refused_naming_promise(r, "fattr")


# --- git ----------------------------------------------------------------------------------

GIT_SCRIPT = """\
set -e
cd repo
git init -q -b main .
echo hello > f.txt
git add f.txt
git commit -q -m first
echo world >> f.txt
git diff --stat
git commit -q -am second
git log --format=%s
cd ..
git clone -q repo clone
git -C clone log --format=%s
"""


@needs_program("git")
def test_git_init_add_commit_log_diff_and_clone(work: Work) -> None:
    work.write("git.sh", GIT_SCRIPT)
    work.write("home/.gitconfig", "[user]\n\tname = Agent\n\temail = agent@example.org\n")
    work.mkdir("repo", "clone")
    r = done(work.run(RECIPES["git"], ["sh", "git.sh"]))
    assert r.stdout.splitlines() == [
        " f.txt | 1 +",
        " 1 file changed, 1 insertion(+)",
        "second",
        "first",
        "second",
        "first",
    ], r.stdout
    log = work.host(["git", "-C", "clone", "log", "--format=%an %s"]).stdout
    assert log == "Agent second\nAgent first\n", log
    assert (work.dir / "clone/f.txt").read_text() == "hello\nworld\n"
    head = work.host(["git", "-C", "repo", "rev-parse", "HEAD"]).stdout
    assert head and head == work.host(["git", "-C", "clone", "rev-parse", "HEAD"]).stdout
    hooks = list((work.dir / "repo/.git/hooks").glob("*.sample"))
    assert hooks and all(mode(h) & 0o111 for h in hooks)  # git's chmod, by the parent
    assert "filemode = true" in (work.dir / "repo/.git/config").read_text()
    for d in ("repo", "clone"):
        shutil.rmtree(work.dir / d)
    work.mkdir("repo", "clone")

    # Control: without its HOME unveiled, git cannot read ~/.gitconfig and stops.
    r = work.run(RECIPES["git"].without(unveil="home"), ["sh", "git.sh"], trace=True)
    assert r.status != 0 and "Permission denied" in r.stderr, r
    cfg = work.dir / "home/.gitconfig"
    refused_naming_path(r, cfg, f"add '{cfg}: r'")


# --- python3 -m venv and pip --------------------------------------------------------------


def tiny_wheel(directory: Path) -> Path:
    """A real wheel of a tiny package with a console script (built here: no network)."""
    import base64
    import hashlib

    files = {
        "tiny/__init__.py": "def main():\n    print('tiny says hello')\n",
        "tiny-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\n",
        "tiny-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: corpus\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
        "tiny-1.0.dist-info/entry_points.txt": "[console_scripts]\ntiny = tiny:main\n",
    }
    path = directory / "tiny-1.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            data = text.encode()
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
        record.append("tiny-1.0.dist-info/RECORD,,")
        z.writestr("tiny-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no /usr/bin/python3")
def test_python_venv_and_pip_install_no_index(work: Work) -> None:
    work.mkdir("venvs", "tmp", "wheels")
    tiny_wheel(work.dir / "wheels")
    work.own_all()
    recipe = RECIPES["venv-pip"]
    r = done(work.run(recipe, ["/usr/bin/python3", "-m", "venv", "venvs/v"]))
    venv = work.dir / "venvs/v"
    assert (venv / "pyvenv.cfg").exists() and (venv / "bin/pip").exists(), r
    assert mode(venv / "bin/pip") == 0o755  # ensurepip's scripts, chmod'ed by the parent
    # Its only refusal: urllib3's IPv6 probe (a socket), failed with EPERM, recorded.
    assert {(v["syscall"], v["promise"], v["action"]) for v in r.violations} <= {
        ("socket", "inet", "errno")
    }, r.violations
    pip = ["venvs/v/bin/python", "-m", "pip", "install", "--no-index"]
    pip += ["--find-links", "wheels", "tiny"]
    r = done(work.run(recipe, pip))
    assert "Successfully installed tiny-1.0" in r.stdout, r
    assert {v["syscall"] for v in r.violations} <= {"socket"}, r.violations
    assert mode(venv / "bin/tiny") == 0o755
    assert work.host([str(venv / "bin/tiny")]).stdout == "tiny says hello\n"
    work.host([str(venv / "bin/python"), "-m", "pip", "uninstall", "-qy", "tiny"])

    # Control: without the wheels unveiled, pip --no-index finds nothing it may read.
    r = work.run(recipe.without(unveil="wheels"), pip, trace=True)
    assert r.status == 1 and "Permission denied" in r.stderr, r
    refused_naming_path(r, work.dir / "wheels", f"add '{work.dir / 'wheels'}: r'")
    assert not (venv / "bin/tiny").exists()


# --- compilers and make -------------------------------------------------------------------

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from c"); return 0; }\n'
HELLO_CC = """#include <iostream>
#include <numeric>
#include <vector>
int main() {
    std::vector<int> v{1, 2, 3, 4};
    std::cout << "sum " << std::accumulate(v.begin(), v.end(), 0) << std::endl;
}
"""


def _compile_and_run(work: Work, name: str, src: str, text: str, expect: str) -> None:
    work.write(src, text)
    work.mkdir("out", "tmp")
    compiler = "gcc" if name == "gcc" else "g++"
    cmd = [compiler, "-O2", "-o", "out/hello", src]
    done(work.run(RECIPES[name], cmd))
    binary = work.dir / "out/hello"
    assert mode(binary) == 0o755, oct(mode(binary))
    assert work.host([str(binary)]).stdout == expect
    assert not list((work.dir / "tmp").iterdir())  # its temporary files, made and removed
    # The result, in a sandbox of its own: read and execute, nothing writable.
    r = done(work.run(RECIPES["run-result"], ["out/hello"]))
    assert r.stdout == expect, r
    binary.unlink()


@needs_program("gcc")
def test_gcc_with_the_default_linker(work: Work) -> None:
    _compile_and_run(work, "gcc", "hello.c", HELLO_C, "hello from c\n")

    # Control: without a temporary directory (no TMPDIR, nothing but /tmp), cc1 cannot
    # write its output; the fix names /tmp and the promise that brings it.
    control = RECIPES["gcc"].without(unveil="tmp", env={})
    r = work.run(control, ["gcc", "-O2", "-o", "out/hello", "hello.c"], trace=True)
    assert r.status != 0 and "Cannot create temporary file" in r.stderr, r
    refused_naming_path(r, "/tmp", "add '/tmp: wc' or the promise 'tmppath', which brings it")


@needs_program("g++")
def test_gxx_with_the_default_linker(work: Work) -> None:
    _compile_and_run(work, "g++", "hello.cc", HELLO_CC, "sum 10\n")

    # Control: without 'fattr' the linker cannot make its output executable.
    r = work.run(RECIPES["g++"].without("fattr"), ["g++", "-O2", "-o", "out/hello", "hello.cc"])
    rec = refused_naming_promise(r, "fattr")
    assert rec["syscall"] == "chmod" and rec["args"] == '"out/hello", 0755', rec


MAKEFILE = """\
CC = gcc
CFLAGS = -O2 -Wall

prog: main.o add.o
\t$(CC) -o $@ $^

%.o: %.c
\t$(CC) $(CFLAGS) -c -o $@ $<
"""


@needs_program("make", "gcc")
def test_make(work: Work) -> None:
    work.write("proj/Makefile", MAKEFILE)
    work.write("proj/add.c", "int add(int a, int b) { return a + b; }\n")
    work.write(
        "proj/main.c",
        '#include <stdio.h>\nint add(int, int);\nint main(void) { printf("%d\\n", add(2, 3)); }\n',
    )
    work.mkdir("tmp")
    r = done(work.run(RECIPES["make"], ["make", "-C", "proj"]))
    assert "gcc -o prog main.o add.o" in r.stdout, r
    assert work.host([str(work.dir / "proj/prog")]).stdout == "5\n"
    assert work.host(["make", "-q", "-C", "proj"]).returncode == 0  # up to date
    assert not r.violations, r.violations  # make's seteuid(geteuid()) needed no 'id'
    for f in ("prog", "main.o", "add.o"):
        (work.dir / "proj" / f).unlink()

    # Control: without 'exec', make cannot run its recipes.
    r = work.run(RECIPES["make"].without("exec"), ["make", "-C", "proj"])
    rec = refused_naming_promise(r, "exec")
    assert rec["syscall"] == "execve" and '["gcc", "-O2", "-Wall"' in rec["args"], rec


# --- sqlite3, sed, sort -------------------------------------------------------------------

SQL = (
    "PRAGMA journal_mode=WAL; CREATE TABLE t(x INTEGER); "
    "INSERT INTO t VALUES (1),(2),(3); SELECT sum(x) FROM t;"
)


@needs_program("sqlite3")
def test_sqlite3_in_wal_mode(work: Work) -> None:
    work.mkdir("db")
    cmd = ["sqlite3", "db/t.db", SQL]
    r = done(work.run(RECIPES["sqlite3"], cmd))
    assert r.stdout.split() == ["wal", "6"], r
    con = sqlite3.connect(work.dir / "db/t.db")
    try:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert con.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,), (3,)]
    finally:
        con.close()
    for f in (work.dir / "db").iterdir():
        f.unlink()

    # Control: without 'flock', sqlite cannot lock the database.
    rec = refused_naming_promise(work.run(RECIPES["sqlite3"].without("flock"), cmd), "flock")
    assert rec["syscall"] == "fcntl" and "F_SETLK, {l_type=F_" in rec["args"], rec


def test_sed_in_place(work: Work) -> None:
    f = work.write("d/f.txt", "alpha\nbeta\n", mode=0o640)
    before = f.stat().st_ino
    cmd = ["sed", "-i", "s/beta/gamma/", "d/f.txt"]
    done(work.run(RECIPES["sed-i"], cmd))
    assert f.read_text() == "alpha\ngamma\n"
    assert mode(f) == 0o640 and f.stat().st_ino != before  # a new file, the old mode
    assert [p.name for p in (work.dir / "d").iterdir()] == ["f.txt"]

    # Control: without 'c' on the directory, sed cannot make its temporary file.
    r = work.run(RECIPES["sed-i"].letters("d", "rw"), cmd, trace=True)
    assert r.status == 4 and "couldn't open temporary file" in r.stderr, r
    refused_naming_path(r, work.dir / "d", f"add '{work.dir / 'd'}: rwc'")
    assert f.read_text() == "alpha\ngamma\n"


def test_sort_with_temporary_files(work: Work) -> None:
    rng = random.Random(9)
    lines = [f"{rng.randrange(10**9):09d} line\n" for _ in range(200_000)]
    work.write("in.txt", "".join(lines))
    work.mkdir("tmp", "out")
    cmd = ["sort", "-S", "1M", "-T", "tmp", "-o", "out/sorted.txt", "in.txt"]
    done(work.run(RECIPES["sort-T"], cmd))
    assert (work.dir / "out/sorted.txt").read_text() == "".join(sorted(lines))
    assert not list((work.dir / "tmp").iterdir())
    (work.dir / "out/sorted.txt").unlink()

    # Control: without 'c' on the -T directory sort cannot spill: it does need it.
    r = work.run(RECIPES["sort-T"].letters("tmp", "rw"), cmd, trace=True)
    assert r.status == 2 and "cannot create temporary file in 'tmp'" in r.stderr, r
    refused_naming_path(r, work.dir / "tmp", f"add '{work.dir / 'tmp'}: rwc'")


# --- curl and wget from a local server ------------------------------------------------------


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An HTTP server on loopback serving one file (mtime 2001: Last-Modified)."""
    root = tmp_path_factory.mktemp("www")
    (root / "file.txt").write_text("payload from the test server\n")
    os.utime(root / "file.txt", (T2001, T2001))
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield httpd.server_address[1], root
    finally:
        httpd.shutdown()
        httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@needs_program("curl")
def test_curl_from_a_local_server(work: Work, server: tuple[int, Path]) -> None:
    port, _ = server
    work.mkdir("dl")
    cmd = ["curl", "-q", "-sS", "-o", "dl/c.txt", f"http://127.0.0.1:{port}/file.txt"]
    done(work.run(RECIPES["curl"], cmd, port=port))
    assert (work.dir / "dl/c.txt").read_text() == "payload from the test server\n"
    (work.dir / "dl/c.txt").unlink()

    # Control: network.connect without the server's port: Landlock refuses the connect.
    other = port + 1 if port < 65535 else port - 1
    r = work.run(RECIPES["curl"], cmd, port=other, trace=True)
    assert r.status == 7 and "Failed to connect" in r.stderr, r
    refused_naming_port(r, port)
    assert not (work.dir / "dl/c.txt").exists()


@needs_program("wget")
def test_wget_from_a_local_server(work: Work, server: tuple[int, Path]) -> None:
    port, _ = server
    work.mkdir("dl")
    cmd = ["wget", "-q", "-P", "dl", f"http://127.0.0.1:{port}/file.txt"]
    done(work.run(RECIPES["wget"], cmd, port=port))
    got = work.dir / "dl/file.txt"
    assert got.read_text() == "payload from the test server\n"
    assert mtime(got) == T2001  # Last-Modified, set through the parent
    got.unlink()

    # Control: without 'fattr', wget cannot date the file as the server did.
    rec = refused_naming_promise(
        work.run(RECIPES["wget"].without("fattr"), cmd, port=port), "fattr"
    )
    assert rec["syscall"] == "utimensat" and f"tv_sec={T2001}" in rec["args"], rec


# --- node, bash ---------------------------------------------------------------------------

NODE_PROG = """\
const fs = require('fs');
function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
let s = 0;
for (let i = 0; i < 300; i++) s += fib(18);
const jitless = process.execArgv.includes('--jitless');
fs.writeFileSync('out/result.json', JSON.stringify({ fib: fib(25), s, jitless }));
console.log('node done');
"""


@needs_program("node")
def test_node_with_its_jit(work: Work) -> None:
    work.write("prog.js", NODE_PROG)
    work.mkdir("out")
    r = done(work.run(RECIPES["node"], ["node", "prog.js"]))
    assert r.stdout == "node done\n", r
    got = json.loads((work.dir / "out/result.json").read_text())
    assert got == {"fib": 75025, "s": 300 * 2584, "jitless": False}, got
    (work.dir / "out/result.json").unlink()

    # Control: without 'jit' node is refused, and the message names jit.
    r = work.run(RECIPES["node"].without("jit"), ["node", "prog.js"])
    assert r.status == VIOLATION_EXIT, r
    line = next(x for x in r.stderr.splitlines() if "pledge violation" in x)
    assert "'jit'" in line and "node" in line, line
    v = r.violations[-1]
    assert v["syscall"] in ("mmap", "mprotect") and "PROT_EXEC" in v["args"], v
    assert "jit" in (v["promise"] or "") or "'jit'" in (v.get("note") or ""), v
    assert not (work.dir / "out/result.json").exists()


JOB_SH = """\
#!/bin/bash
set -euo pipefail
count=$(wc -l < data/in.txt)
cut -d' ' -f1 data/in.txt | sort | uniq -c | sort -rn | head -n 2 > out/top.txt
awk '{s += $2} END {print s}' data/in.txt > out/sum.txt
while read -r k v; do echo "$k=$((v * 10))"; done < data/in.txt | tr a-z A-Z > out/scaled.txt
echo "lines=$count" | tee out/count.txt
"""


@needs_program("bash", "awk")
def test_bash_script_with_pipelines(work: Work) -> None:
    work.write("job.sh", JOB_SH)
    work.write("data/in.txt", "b 2\na 1\nc 3\na 4\n")
    work.mkdir("out")
    r = done(work.run(RECIPES["bash"], ["bash", "job.sh"]))
    assert r.stdout == "lines=4\n", r
    out = work.dir / "out"
    assert (out / "top.txt").read_text().split() == ["2", "a", "1", "c"]
    assert (out / "sum.txt").read_text() == "10\n"
    assert (out / "scaled.txt").read_text() == "B=20\nA=10\nC=30\nA=40\n"
    assert (out / "count.txt").read_text() == "lines=4\n"
    for f in out.iterdir():
        f.unlink()

    # Control: without 'proc', bash cannot fork its pipelines.
    r = work.run(RECIPES["bash"].without("proc"), ["bash", "job.sh"])
    rec = refused_naming_promise(r, "proc")
    assert rec["syscall"] in ("clone", "fork", "vfork"), rec


# --- the README shows these very policies --------------------------------------------------


def test_readme_recipes_table_is_the_corpus() -> None:
    readme = (ROOT / "README.md").read_text()
    assert recipes_markdown() in readme, (
        "README's Recipes table differs from tests/test_corpus.py's RECIPES; paste:\n"
        + recipes_markdown()
    )
