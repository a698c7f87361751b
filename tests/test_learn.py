"""`sandbox learn`: one run of a real program, then the tightest policy that lets it run.

For each program of the corpus (git, tar, sqlite3, a bash pipeline, a Python script, grep,
sort): learn in one fresh working directory, then run under the learned policy in another
(the policy names the working directory ${CWD}); the output is what the program gives
without a sandbox. The policy is not wider than the run needs: without any one of its lines
the run fails, unless `--trim` marked the line optional (then it succeeds without it, and
that is checked too). And what the run did not do stays refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from progs.snippets import audit_records, tcp_servers
from progs.snippets import sandbox_cli as sandbox

from sandbox.tools import observe, propose
from sandbox.tools.learn import program_errors
from sandbox.tools.observe import Access, Call, Observations

REPO = Path(__file__).resolve().parents[1]
GUARD = 180.0
PY = "/usr/bin/python3"
GIT_ID = ["-c", "user.name=A U Thor", "-c", "user.email=author@example.org"]


@dataclass
class Case:
    name: str
    setup: Callable[[Path], None]
    command: list[str]
    check: Callable[[Path, subprocess.CompletedProcess[str]], None]


def _git_repo(d: Path) -> None:
    subprocess.run(["git", "init", "-q", str(d)], check=True)
    (d / "f.txt").write_text("hello\n")


def _git_added(d: Path) -> None:
    _git_repo(d)
    subprocess.run(["git", "-C", str(d), "add", "f.txt"], check=True)


def _check_added(d: Path, p: subprocess.CompletedProcess[str]) -> None:
    out = subprocess.run(["git", "-C", str(d), "ls-files"], capture_output=True, text=True)
    assert out.stdout == "f.txt\n", (out, p)


def _check_committed(d: Path, p: subprocess.CompletedProcess[str]) -> None:
    out = subprocess.run(
        ["git", "-C", str(d), "log", "--format=%s %an"], capture_output=True, text=True
    )
    assert out.stdout == "first A U Thor\n", (out, p)


def _check_initialised(d: Path, p: subprocess.CompletedProcess[str]) -> None:
    head = subprocess.run(["git", "-C", str(d), "symbolic-ref", "HEAD"], capture_output=True,
                          text=True)  # fmt: skip
    assert head.stdout.startswith("refs/heads/"), (head, p)
    assert os.access(d / ".git" / "config", os.R_OK)


def _src(d: Path) -> None:
    (d / "src" / "sub").mkdir(parents=True)
    (d / "src" / "n.txt").write_text("".join(f"{i}\n" for i in range(2000)))
    (d / "src" / "sub" / "h.txt").write_text("hi\n")


def _check_tgz(d: Path, p: subprocess.CompletedProcess[str]) -> None:
    out = subprocess.run(["tar", "tzf", str(d / "out.tgz")], capture_output=True, text=True)
    assert sorted(out.stdout.split()) == ["src/", "src/n.txt", "src/sub/", "src/sub/h.txt"], p


def _tgz(d: Path) -> None:
    tmp = d / "made"
    tmp.mkdir()
    _src(tmp)
    subprocess.run(["tar", "czf", str(d / "a.tgz"), "-C", str(tmp), "src"], check=True)
    shutil.rmtree(tmp)


def _check_extracted(d: Path, p: subprocess.CompletedProcess[str]) -> None:
    assert (d / "src" / "sub" / "h.txt").read_text() == "hi\n", p
    assert len((d / "src" / "n.txt").read_text().splitlines()) == 2000


def _lines(d: Path) -> None:
    (d / "in.txt").write_text("".join(f"{i % 37}\n" for i in range(500)))


def _expect_stdout(expected: str) -> Callable[[Path, subprocess.CompletedProcess[str]], None]:
    def check(d: Path, p: subprocess.CompletedProcess[str]) -> None:
        assert p.stdout == expected, p

    return check


SCRIPT = """
import json, os, threading
seen = sorted(os.listdir("."))
t = threading.Thread(target=lambda: None)
t.start(); t.join()
with open("out.txt", "w") as f:
    f.write("written")
print(json.dumps(seen))
"""


def _script(d: Path) -> None:
    (d / "s.py").write_text(SCRIPT)
    (d / "data.txt").write_text("x")


def _check_script(d: Path, p: subprocess.CompletedProcess[str]) -> None:
    assert p.stdout == '["data.txt", "s.py"]\n', p
    assert (d / "out.txt").read_text() == "written"


def _tree(d: Path) -> None:
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "x.txt").write_text("a needle here\n")
    (d / "a" / "y.txt").write_text("hay\n")
    (d / "z.txt").write_text("needle\n")


def _check_grep(d: Path, p: subprocess.CompletedProcess[str]) -> None:
    assert sorted(p.stdout.splitlines()) == ["./a/b/x.txt:a needle here", "./z.txt:needle"], p


def _numbers(d: Path) -> None:
    (d / "in.txt").write_text("".join(f"{(i * 7919) % 20011}\n" for i in range(20000)))
    (d / "tmp").mkdir()


def _check_sorted(d: Path, p: subprocess.CompletedProcess[str]) -> None:
    got = [int(x) for x in (d / "out.txt").read_text().split()]
    assert got == sorted(got) and len(got) == 20000, p
    assert os.listdir(d / "tmp") == []  # sort removed its temporary files


CORPUS = [
    Case("git-add", _git_repo, ["git", "add", "f.txt"], _check_added),
    Case("git-commit", _git_added, ["git", *GIT_ID, "commit", "-qm", "first"], _check_committed),
    Case("tar-create", _src, ["tar", "czf", "out.tgz", "src"], _check_tgz),
    # tar sets times and modes by path, git init the mode of .git/config: calls the parent
    # performs (fattr's path forms), which learn learns like any other.
    Case("tar-extract", _tgz, ["tar", "xzf", "a.tgz"], _check_extracted),
    Case("git-init", lambda d: None, ["git", "init", "-q", "."], _check_initialised),
    Case(
        "sqlite3",
        lambda d: None,
        ["sqlite3", "db.sqlite", "create table t(x); insert into t values (42); select x from t;"],
        _expect_stdout("42\n"),
    ),
    Case(
        "bash-pipeline",
        _lines,
        ["bash", "-c", "cat in.txt | grep 1 | sort -n | uniq -c | wc -l"],
        _expect_stdout("13\n"),
    ),
    Case("python3", _script, [PY, "s.py"], _check_script),
    Case("grep-r", _tree, ["grep", "-r", "needle", "."], _check_grep),
    Case(
        "sort-T",
        _numbers,
        ["sort", "-n", "-S", "64K", "-T", "tmp", "-o", "out.txt", "in.txt"],
        _check_sorted,
    ),
]


def fresh(tmp_path: Path, case: Case, label: str) -> Path:
    d = tmp_path / label / "work"  # the same depth each time: paths are ${CWD}-relative
    d.mkdir(parents=True)
    case.setup(d)
    return d


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A home of its own: no ~/.gitconfig or history of the person running the tests.
    return tmp_path_factory.mktemp("home")


def env_for(home: Path) -> dict[str, str]:
    return dict(os.environ, HOME=str(home), LANG="C.UTF-8", PATH="/usr/bin:/bin")


def learn(
    case: Case, d: Path, home: Path, *flags: str
) -> tuple[str, subprocess.CompletedProcess[str]]:
    policy = d.parent / "learned.yaml"
    log = d.parent / "audit.jsonl"
    p = sandbox(
        "learn",
        "--out",
        str(policy),
        "--audit-log",
        str(log),
        *flags,
        "--",
        *case.command,
        cwd=d,
        env=env_for(home),
    )
    return (policy.read_text() if policy.exists() else ""), p


def run_under(
    text: str, d: Path, home: Path
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    policy = d.parent / "policy.yaml"
    policy.write_text(text)
    log = d.parent / "run.jsonl"
    p = sandbox("run", str(policy), "--audit-log", str(log), cwd=d, env=env_for(home))
    return p, audit_records(log)


def removable(text: str) -> Iterator[tuple[int, str]]:
    """(index, line) of each line that grants something: a promise, a path, a port."""
    section = ""
    for i, line in enumerate(text.splitlines()):
        if line and not line.startswith((" ", "#")):
            section = line.split(":")[0]
        grants = (
            (section in ("pledge", "execpromises") and line.startswith("  - "))
            or (section == "unveil" and line.startswith('  "'))
            or (section == "network" and line.startswith("    - "))
        )
        if grants:
            yield i, line


def without(text: str, index: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:index] + lines[index + 1 :]) + "\n"


# --------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_learned_policy_runs_the_program_and_is_not_wider_than_needed(
    tmp_path: Path, case: Case, home: Path
) -> None:
    # Without a sandbox, for the expected output.
    plain = fresh(tmp_path, case, "plain")
    direct = subprocess.run(
        case.command, cwd=plain, capture_output=True, text=True, env=env_for(home), timeout=GUARD
    )
    assert direct.returncode == 0, direct
    case.check(plain, direct)

    text, p = learn(case, fresh(tmp_path, case, "learn"), home, "--trim")
    assert p.returncode == 0, p
    assert "LEARNING IS NOT A SANDBOX" in p.stderr
    assert text.startswith("# Learned by `sandbox learn`")
    grants = list(removable(text))
    assert grants, text
    for _, line in grants:
        assert "  # " in line, f"every line says what needed it: {line!r}"

    # Under the learned policy, in another directory: the same result, nothing refused.
    d = fresh(tmp_path, case, "run")
    r, recs = run_under(text, d, home)
    assert r.returncode == 0, (r, text)
    assert [x for x in recs if x["kind"] == "violation"] == [], recs
    case.check(d, r)

    # Not wider than needed: without any one line the run goes otherwise (status, output or
    # errors: a pipeline's status alone hides a failing stage) or something is refused,
    # unless the line is marked optional, in which case it goes exactly the same.
    reference = (r.returncode, r.stdout, program_errors(r.stderr))
    for n, (index, line) in enumerate(grants):
        d = fresh(tmp_path, case, f"without-{n}")
        r, recs = run_under(without(text, index), d, home)
        refused = [x for x in recs if x["kind"] == "violation"]
        # The launcher's own lines ("sandbox: ...") are not the program's: the hints naming
        # a path Landlock refused come only while the kernel's audit is on (host-wide).
        same = (r.returncode, r.stdout, program_errors(r.stderr)) == reference and not refused
        if "# optional:" in line:
            assert same, (line, r, refused)
        else:
            assert not same, f"the run needs no {line!r}\n{text}"


def test_verify_reports_success_and_the_first_refusal(tmp_path: Path, home: Path) -> None:
    case = next(c for c in CORPUS if c.name == "grep-r")
    text, p = learn(case, fresh(tmp_path, case, "learn"), home, "--verify")
    assert p.returncode == 0 and "sandbox learn: verified" in p.stderr, p
    # The learned policy names only what grep touched: reading /etc is refused...
    d = fresh(tmp_path, case, "outside")
    policy = d.parent / "p.yaml"
    policy.write_text(text)
    r = sandbox(
        "run",
        str(policy),
        "--audit-log",
        str(d.parent / "a.jsonl"),
        "--",
        "grep",
        "-r",
        "root",
        "/etc/passwd",
        cwd=d,
        env=env_for(home),
    )
    assert r.returncode == 2 and "Permission denied" in r.stderr, r
    # ...which works without the sandbox (the test could fail).
    assert subprocess.run(["grep", "-q", "root", "/etc/passwd"]).returncode == 0


def test_learned_ports_and_what_stays_refused(tmp_path: Path, home: Path) -> None:
    client = (
        "import socket, sys\n"
        "for port in sys.argv[1:]:\n"
        "    try:\n"
        "        c = socket.create_connection(('127.0.0.1', int(port)))\n"
        "        print(port, c.recv(2).decode(), flush=True)\n"
        "    except OSError as e:\n"
        "        print(port, 'refused', e.errno, flush=True)\n"
    )
    with tcp_servers([0, 0], greeting=b"hi") as ports:
        d = tmp_path / "learn"
        d.mkdir()
        (d / "c.py").write_text(client)
        case = Case("net", lambda x: None, [PY, "c.py", str(ports[0])], lambda x, p: None)
        text, p = learn(case, d, home, "--verify")
        assert p.returncode == 0, p
        assert "  - inet" in text and f"    - {ports[0]}" in text, text
        assert str(ports[1]) not in text
        # Under the learned policy the learned port works and the other is refused by
        # Landlock (EACCES); without the sandbox both work.
        both = text.replace(f'"c.py", "{ports[0]}"]', f'"c.py", "{ports[0]}", "{ports[1]}"]')
        r, _ = run_under(both, d, home)
        assert r.stdout.splitlines() == [f"{ports[0]} hi", f"{ports[1]} refused 13"], (r, text)
        direct = subprocess.run(
            [PY, "c.py", *map(str, ports)], cwd=d, capture_output=True, text=True
        )
        assert direct.stdout.splitlines() == [f"{ports[0]} hi", f"{ports[1]} hi"], direct


def test_calls_no_promise_allows_are_named(tmp_path: Path, home: Path) -> None:
    # inotify_add_watch is allowed by no promise (Landlock does not check it) and unshare is
    # never allowed: the learning run fails both with EPERM and says so. No policy lets them
    # through; the script copes with EPERM, so the policy says violation: errno, under which
    # the parent fails them the same way (never performs them), and the run goes as learned.
    script = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.inotify_init1(0)\n"
        "print('watch', libc.inotify_add_watch(fd, b'.', 0x100) >= 0, flush=True)\n"
        "print('unshare', libc.unshare(0x04000000) == 0, flush=True)  # CLONE_NEWUTS\n"
    )
    d = tmp_path / "learn"
    d.mkdir()
    (d / "w.py").write_text(script)
    direct = subprocess.run([PY, "w.py"], cwd=d, capture_output=True, text=True)
    assert direct.stdout == "watch True\nunshare True\n", "without a sandbox both work"
    case = Case("watch", lambda x: None, [PY, "w.py"], lambda x, p: None)
    text, p = learn(case, d, home)
    assert p.returncode == 0, p
    assert "inotify_add_watch(" in p.stderr and "no promise allows it" in p.stderr, p.stderr
    assert "unshare(CLONE_NEWUTS)" in p.stderr and "is never allowed" in p.stderr, p.stderr
    header = text.split("version: 1")[0]
    assert "inotify_add_watch" in header and "unshare" in header
    assert "violation: errno" in text
    r, recs = run_under(text, d, home)
    assert (r.returncode, r.stdout) == (0, "watch False\nunshare False\n"), r
    refused = [(x["syscall"], x["action"]) for x in recs if x["kind"] == "violation"]
    assert refused == [("inotify_add_watch", "errno"), ("unshare", "errno")], recs
    # Under kill (the default) the same calls end the run.
    r, _ = run_under(text.replace("violation: errno", "violation: kill"), d, home)
    assert r.returncode == 159 and "inotify_add_watch" in r.stderr, r


def test_learn_to_stdout_and_usage(tmp_path: Path, home: Path) -> None:
    p = sandbox(
        "learn",
        "--audit-log",
        str(tmp_path / "a.jsonl"),
        "--name",
        "lister",
        "--env",
        "GREETING=hi",
        "--",
        "ls",
        str(tmp_path),
        cwd=tmp_path,
        env=env_for(home),
    )
    assert p.returncode == 0, p
    assert "name: lister" in p.stdout and "GREETING" in p.stdout and "  - rpath" in p.stdout
    for args in (
        ["learn"],
        ["learn", "--name", "Bad_Name", "--", "true"],
        ["learn", "--env", "1X=y", "--", "true"],
    ):
        bad = sandbox(*args, cwd=tmp_path, env=env_for(home))
        assert bad.returncode == 2 and bad.stderr.strip(), (args, bad)


# --------------------------------------------------------------------------- the proposer


def _call(
    name: str,
    *args: int,
    outcome: str = "continue",
    execd: bool = False,
    self_pid: int | None = None,
) -> Call:
    full = (*args, *([0] * (6 - len(args))))
    return Call(name, full, self_pid, execd, outcome, False, name, "t[1]")


def test_promises_are_the_lightest_that_decide_each_call() -> None:
    from sandbox.enforce import syscalls as S

    cases = [
        ([_call("openat", S.AT_FDCWD, 1, S.O_RDONLY)], {"stdio", "rpath"}),
        ([_call("openat", S.AT_FDCWD, 1, S.O_WRONLY | S.O_CREAT)], {"stdio", "wpath", "cpath"}),
        (
            [_call("openat", S.AT_FDCWD, 1, S.O_RDWR | S.O_CREAT)],
            {"stdio", "rpath", "wpath", "cpath"},
        ),
        # glibc's nscd probe answered ENOSYS: getpw, not unix (lighter, and what it is for)
        ([_call("socket", S.AF_UNIX, S.SOCK_STREAM, outcome="enosys")], {"stdio", "getpw"}),
        ([_call("clone", S.CLONE_VM | S.CLONE_THREAD | S.CLONE_SIGHAND)], {"stdio", "thread"}),
        ([_call("clone", 0x11)], {"stdio", "proc"}),
        ([_call("kill", 7, 15, self_pid=7)], {"stdio"}),  # a signal to itself
        ([_call("kill", 8, 15)], {"stdio", "proc"}),
        ([_call("execve", 0)], {"stdio", "exec"}),
    ]
    for calls, expected in cases:
        got = propose.solve(calls)
        assert got == expected, (calls, got)
        for c in calls:
            assert propose.decided(c, got)
            if got != {"stdio"}:
                assert not propose.decided(c, frozenset({"stdio"}))


def test_exec_d_programs_get_execpromises_within_the_pledge() -> None:
    from sandbox.enforce import syscalls as S

    obs = Observations(command=["/bin/sh"], execd_any=True)
    obs.calls += [
        _call("clone", 0x11),
        _call("execve", 0),
        _call("openat", S.AT_FDCWD, 1, S.O_WRONLY | S.O_CREAT, execd=True),
    ]
    p = propose.propose(obs)
    assert p.execpromises == {"stdio", "wpath", "cpath"}
    assert p.pledge == {"stdio", "proc", "exec", "wpath", "cpath"}
    assert p.reasons[("pledge", "cpath")].startswith("in execpromises")


def _obs(accesses: list[tuple[str, str]], **kw: set[str]) -> Observations:
    obs = Observations(command=["/bin/true"])
    obs.accesses = [Access(p, letters, f"open {p}") for p, letters in accesses]
    for k, v in kw.items():
        setattr(obs, k, v)
    return obs


def test_unveil_folds_a_directory_only_where_most_of_it_was_touched(tmp_path: Path) -> None:
    many, few = tmp_path / "many", tmp_path / "few"
    for d in (many, few):
        d.mkdir()
        for i in range(10):
            (d / f"f{i}").write_text("x")
    touched = [(str(many / f"f{i}"), "r") for i in range(7)] + [
        (str(few / "f0"), "r"),
        (str(few / "f1"), "r"),
    ]
    entries, _ = propose.unveil_entries(_obs(touched), frozenset({"stdio", "rpath"}))
    got = {e.path: e.letters for e in entries}
    assert got == {str(many): "r", str(few / "f0"): "r", str(few / "f1"): "r"}, got
    # Per letter: one file written among many read gets 'w' on its own, and 'r' too, as its
    # own entry decides it (the closest decides, as in the parent's checks).
    touched.append((str(many / "f3"), "w"))
    entries, _ = propose.unveil_entries(_obs(touched), frozenset({"stdio", "rpath", "wpath"}))
    got = {e.path: e.letters for e in entries}
    assert got[str(many)] == "r" and got[str(many / "f3")] == "rw", got


def test_unveil_of_created_and_replaced_files_goes_to_their_directory(tmp_path: Path) -> None:
    work = tmp_path / "w"
    (work / "new").mkdir(parents=True)
    (work / "kept").write_text("x")
    (work / "index").write_text("x")
    accesses = [
        (str(work), "c"),  # mkdir new, rename index.lock over index
        (str(work / "new" / "file"), "w"),  # inside what the run created
        (str(work / "index"), "r"),  # replaced: a new inode afterwards
        (str(work / "kept"), "r"),
        ("/proc/12345/status", "r"),
        ("/etc/passwd", "r"),  # brought by getpw
    ]
    obs = _obs(accesses, created={str(work / "new")}, replaced={str(work / "index")})
    entries, unexpressible = propose.unveil_entries(obs, frozenset({"stdio", "rpath", "getpw"}))
    got = {e.path: e.letters for e in entries}
    # 'r' of the replaced index is the directory's; with kept's, most of it: folded.
    assert got == {str(work): "rwc"}, got
    assert unexpressible == ["/proc/12345/status"]


def test_interpreters_of_scripts_and_programs(tmp_path: Path) -> None:
    script = tmp_path / "s"
    script.write_text("#!/bin/sh -e\necho hi\n")
    assert observe.interpreters(str(script))[0] == "/bin/sh"
    assert observe.interpreters("/usr/bin/ls") == ["/lib64/ld-linux-x86-64.so.2"]
    assert observe.interpreters(str(tmp_path / "missing")) == []


def test_learn_and_run_as_the_unprivileged_user(tmp_path: Path) -> None:
    from progs.asuser import PY as VENV_PY
    from progs.asuser import as_user

    u = as_user(tmp_path)
    u.write("data/a/x.txt", "a needle here\n")
    u.write("data/z.txt", "needle\n")
    learned = u.run(
        [VENV_PY, "-m", "sandbox", "learn", "--out", "p.yaml", "--audit-log", "l.jsonl",
         "--verify", "--", "grep", "-r", "needle", "data"],
        timeout=GUARD,
    )  # fmt: skip
    assert learned.returncode == 0 and "sandbox learn: verified" in learned.stderr, learned
    r = u.run([VENV_PY, "-m", "sandbox", "run", "p.yaml", "--audit-log", "r.jsonl"])
    assert r.returncode == 0, r
    assert sorted(r.stdout.splitlines()) == ["data/a/x.txt:a needle here", "data/z.txt:needle"]
    # What the run did not read stays refused, though the user can read it.
    outside = ["grep", "-c", "", "/etc/hostname"]
    assert u.run(outside).returncode == 0
    r = u.run([VENV_PY, "-m", "sandbox", "run", "p.yaml", "--audit-log", "r.jsonl", "--",
               *outside])  # fmt: skip
    assert r.returncode == 2 and "Permission denied" in r.stderr, r
