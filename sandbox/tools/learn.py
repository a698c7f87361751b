"""`sandbox learn [--out FILE] [--verify] [--trim] -- COMMAND`: one run, the tightest policy.

The command runs once under the observing supervisor (sandbox.tools.observe: LEARNING IS
NOT A SANDBOX, every call is allowed), sandbox.tools.propose turns what it did into a
policy, and this module adds the limits (what the run used, with headroom), writes the
policy and, if asked, checks it:

- `--verify` runs the command again under the policy (a real `sandbox run`) and reports
  success or the first refusal;
- `--trim` runs it once without each line (promise, path, port) and marks the lines the run
  does not need `# optional:` (the run then succeeds without them; they are kept, because
  the learned run used them, e.g. a locale file whose absence only changes messages).

Both run in a fresh copy of the working directory as it was before learning (so `git
commit` or `tar xzf` find what they found the first time); paths under it are written as
`${CWD}/...`, so the policy works in any copy. Effects outside the working directory
(files in /tmp, the home directory) are not undone between runs.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sandbox.enforce.kernel import Features, probe
from sandbox.enforce.plan import Plan, compile_plan
from sandbox.enforce.promises import never_allowed
from sandbox.errors import PolicyError, SetupError, UsageError
from sandbox.plain import replace
from sandbox.policy.model import Env, Limits, Policy
from sandbox.tools.observe import Learner, Observations, stdio_fast_rules
from sandbox.tools.propose import Proposal, propose, render

WARNING = (
    "sandbox learn: LEARNING IS NOT A SANDBOX: {cmd} runs with every system call allowed "
    "and every path reachable; the parent only records what it does. Learn only what you "
    "would run without a sandbox."
)
MAX_COPY_BYTES = 256 * 1024 * 1024  # a working directory larger than this is not copied
MAX_COPY_FILES = 20_000
OPTIONAL = "optional: "


@dataclass
class LearnResult:
    text: str  # the policy
    status: int  # the learned run's exit status
    proposal: Proposal
    verified: bool | None = None  # None: not asked
    verify_message: str = ""


# --- running -------------------------------------------------------------------------------


def _learning_plan(policy: Policy, feats: Features, environ: Mapping[str, str]) -> Plan:
    plan = compile_plan(policy, feats, environ)
    return replace(
        plan,
        rules=tuple(stdio_fast_rules()),
        landlock=None,
        unveils=(),
        noexec=(),
        rlimits=(),
        cgroup_memory=None,
        cgroup_processes=None,
        requirements=(),
        degraded=("learning: every call is allowed and recorded; nothing is enforced",),
        dns_relay=False,
    )


@dataclass
class Usage:
    status: int
    seconds: float
    cpu: float
    max_rss: int  # bytes, the largest process


def observe_run(
    command: Sequence[str],
    audit_log: str,
    *,
    env: Env,
    name: str,
    feats: Features,
) -> tuple[Observations, Usage]:
    """Run `command` once with every call allowed and recorded."""
    from sandbox.parent.launcher import resolve_command, run

    if not feats.user_notif:
        raise SetupError("learn needs seccomp user notification, which this kernel lacks")
    policy = Policy(name=name, env=env)
    plan = _learning_plan(policy, feats, os.environ)
    program = resolve_command(command, plan.env)
    obs = Observations(command=[program, *command[1:]])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = run(
        policy,
        command,
        audit_log,
        feats=feats,
        plan=plan,
        supervisor=functools.partial(Learner, obs=obs),
    )
    seconds = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return obs, Usage(result.status, seconds, cpu, after.ru_maxrss * 1024)


# --- limits ------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    mib = max(1, math.ceil(n / 2**20))
    size = 1 << (mib - 1).bit_length()  # the next power of two
    return f"{size // 1024}GiB" if size >= 1024 and size % 1024 == 0 else f"{size}MiB"


def _duration(seconds: float) -> str:
    s = max(1, math.ceil(seconds))
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


def _nice_seconds(seconds: float) -> float:
    for step in (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400):
        if seconds <= step:
            return float(step)
    return float(math.ceil(seconds / 86400) * 86400)


def _largest_written(obs: Observations) -> int:
    largest = 0
    for a in obs.accesses:
        if "w" in a.letters:
            try:
                st = os.stat(a.path)
            except OSError:
                continue
            if os.path.isfile(a.path):
                largest = max(largest, st.st_size)
    try:  # output redirected to a file counts against RLIMIT_FSIZE too
        st = os.fstat(1)
        if stat.S_ISREG(st.st_mode):
            largest = max(largest, st.st_size)
    except OSError:
        pass
    return largest


def limits_for(obs: Observations, use: Usage, feats: Features) -> list[tuple[str, str, str, bool]]:
    """Limits with headroom over what the run used: (key, value, why, enforceable here)."""
    wall = _nice_seconds(max(10.0, use.seconds * 10))
    cpu = _nice_seconds(max(10.0, use.cpu * 10))
    rows: list[tuple[str, str, str]] = [
        ("wall", _duration(wall), f"the run took {use.seconds:.2f} s (learning is slower)"),
        ("cpu", _duration(cpu), f"it used {use.cpu:.2f} s of CPU"),
        (
            "memory",
            _mib(max(64 * 2**20, 4 * use.max_rss)),
            f"its largest process peaked at {use.max_rss / 2**20:.1f} MiB",
        ),
        (
            "processes",
            str(max(8, 2 * obs.tasks)),
            f"it ran {obs.tasks} processes and threads in all",
        ),
        (
            "file_size",
            _mib(max(64 * 2**20, 4 * _largest_written(obs))),
            f"the largest file it wrote has {_largest_written(obs) / 2**20:.1f} MiB",
        ),
    ]
    # What this machine cannot enforce is shown, commented out: the plan says what.
    from sandbox.policy import units

    probe_limits = Limits(memory=units.parse_size(rows[2][1]), processes=int(rows[3][1]))
    plan = compile_plan(Policy(name="limits", limits=probe_limits), feats)
    cgroups = not any(r.name.startswith("cgroup") for r in plan.missing)
    return [(k, v, why, cgroups or k not in ("memory", "processes")) for k, v, why in rows]


# --- checking the policy ----------------------------------------------------------------------


class WorkCopy:
    """A copy of the working directory as it was before learning, copied again per run."""

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.tmp = tempfile.mkdtemp(prefix="sandbox-learn-")
        self.pristine = os.path.join(self.tmp, "pristine")
        self.ok = _small_enough(cwd)
        if self.ok:
            shutil.copytree(cwd, self.pristine, symlinks=True)
        self.runs = 0

    def fresh(self) -> str:
        """A new copy (or the working directory itself if it was too large to copy)."""
        if not self.ok:
            return self.cwd
        self.runs += 1
        # The same name every time: what the program records of its own directory
        # (a path in a file it wrote) stays valid from one run to the next.
        work = os.path.join(self.tmp, "work")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(self.pristine, work, symlinks=True)
        return work

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _small_enough(cwd: str) -> bool:
    total = files = 0
    for root, dirs, names in os.walk(cwd):
        files += len(names) + len(dirs)
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except OSError:
                continue
        if total > MAX_COPY_BYTES or files > MAX_COPY_FILES:
            return False
    return True


@dataclass
class Trial:
    status: int
    stdout: str
    stderr: str
    refusal: str  # the first refusal recorded, or the program's last error line

    def same_as(self, other: Trial) -> bool:
        """The run went as `other` did: same status and output, nothing refused. The
        launcher's own lines ("sandbox: ...", such as the hints naming a path Landlock
        refused, which depend on whether the kernel's audit is on) are not the program's."""
        return not self.refusal and (self.status, self.stdout, program_errors(self.stderr)) == (
            other.status,
            other.stdout,
            program_errors(other.stderr),
        )


def program_errors(stderr: str) -> str:
    """`stderr` without the launcher's own lines."""
    return "".join(ln for ln in stderr.splitlines(True) if not ln.startswith("sandbox: "))


def try_policy(text: str, command: Sequence[str], cwd: str, expect: int) -> Trial:
    """Run `command` in `cwd` under the policy `text` with a real `sandbox run`."""
    with tempfile.TemporaryDirectory(prefix="sandbox-learn-try-") as d:
        path = os.path.join(d, "policy.yaml")
        log = os.path.join(d, "audit.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        argv = [sys.executable, "-m", "sandbox", "run", path, "--audit-log", log]
        proc = subprocess.run(
            [*argv, "--", *command],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
        refusal = ""
        try:
            with open(log, encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    if r.get("kind") == "violation" or r.get("decision") == "deny":
                        from sandbox.parent.audit import SUMMARIES

                        refusal = SUMMARIES.get(r["kind"], str)(r)
                        break
        except (OSError, ValueError):
            pass
        if not refusal and proc.returncode != expect:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            refusal = lines[-1] if lines else f"exit status {proc.returncode}"
        return Trial(proc.returncode, proc.stdout, proc.stderr, refusal)


def variants(p: Proposal) -> list[tuple[tuple[str, str], Proposal]]:
    """The proposal without one line each: (the line's key, the proposal without it)."""
    out: list[tuple[tuple[str, str], Proposal]] = []
    execp = p.execpromises or frozenset()
    for promise in sorted(p.pledge - {"stdio"}):
        out.append((("pledge", promise), replace(p, pledge=p.pledge - {promise})))
    for promise in sorted(execp - {"stdio"}):
        out.append((("execpromises", promise), replace(p, execpromises=execp - {promise})))
    for i, e in enumerate(p.unveil):
        rest = [*p.unveil[:i], *p.unveil[i + 1 :]]
        out.append((("unveil", e.path), replace(p, unveil=rest)))
    for port in p.connect:
        fewer = {q: w for q, w in p.connect.items() if q != port}
        out.append((("connect", str(port)), replace(p, connect=fewer)))
    for port in p.bind:
        fewer = {q: w for q, w in p.bind.items() if q != port}
        out.append((("bind", str(port)), replace(p, bind=fewer)))
    return out


def trim(p: Proposal, command: Sequence[str], work: WorkCopy, expect: int) -> Proposal:
    """Mark the lines the run does not need: run once with the whole policy, then once
    without each line; a line is optional where the run goes exactly as with it (status,
    output and errors; a pipeline's status alone hides a failing stage)."""
    reference = try_policy(render(p), command, work.fresh(), expect)
    if reference.refusal:
        _say(f"sandbox learn: --trim: the policy itself does not work: {reference.refusal}")
        return p
    marked = dict(p.reasons)
    for key, without in variants(p):
        if try_policy(render(without), command, work.fresh(), expect).same_as(reference):
            marked[key] = OPTIONAL + "the run goes the same without it; " + marked.get(key, "")
    return replace(p, reasons=marked)


# --- the command ------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def learn(
    command: Sequence[str],
    *,
    audit_log: str,
    out: str | None = None,
    verify: bool = False,
    trim_lines: bool = False,
    name: str | None = None,
    env_flags: Sequence[str] = (),
    feats: Features | None = None,
) -> LearnResult:
    """Learn a policy for one run of `command`; see the module's docstring."""
    import shlex

    from sandbox.policy.loader import load_policy_text
    from sandbox.policy.narrow import env_from_flags
    from sandbox.tools.propose import default_name

    if not command:
        raise UsageError("learn: give the command after --, e.g. sandbox learn -- ls /usr")
    feats = probe() if feats is None else feats
    name = name or default_name(command)
    if name is not None:
        from sandbox.policy.schema import NAME_RE

        if not NAME_RE.fullmatch(name):
            raise UsageError(f"--name '{name}' must match [a-z][a-z0-9-]* (e.g. 'git-commit')")
    # --env: the same values `run --env` takes, checked by the same code.
    env = env_from_flags(list(env_flags)) if env_flags else Env()
    cwd = os.path.realpath(os.getcwd())
    work = WorkCopy(cwd) if (verify or trim_lines) else None
    if work is not None and not work.ok:
        _say(
            f"sandbox learn: {cwd} is larger than {MAX_COPY_BYTES >> 20} MiB or "
            f"{MAX_COPY_FILES} files: --verify/--trim run in it, as the learning run left it"
        )
    try:
        _say(WARNING.format(cmd=shlex.join(command)))
        obs, use = observe_run(command, audit_log, env=env, name=name, feats=feats)
        p = propose(obs)
        home = os.path.realpath(os.environ.get("HOME") or os.path.expanduser("~"))
        p = replace(
            p,
            name=name,
            limits=limits_for(obs, use, feats),
            templates={"CWD": cwd, "HOME": home},
            env_keep=[n for n in env.keep if n not in Env().keep],
            env_set=dict(env.set),
        )
        if obs.refused and use.status == 0:
            # The run coped with EPERM for the calls no promise allows; under `errno` the
            # parent fails them so too (never performed), under `kill` it would end the run.
            p = replace(p, violation="errno")
        p.header.extend(_header(command, cwd, use, obs, p))
        text = render(p)
        try:
            policy = load_policy_text(text, out or "<learned>", cwd)
        except PolicyError as e:  # a defect of learn, not of the run: say so plainly
            raise SetupError(
                "learn produced a policy the loader refuses (a bug):\n"
                + "\n".join(str(x) for x in e.problems)
            ) from e
        missing = compile_plan(policy, feats).missing
        for r in missing:
            _say(f"sandbox learn: this machine cannot enforce {r.name}: {r.missing}")
        for call in obs.refused:
            # No policy lets such a call through: the parent fails it with EPERM under
            # violation: errno (as the learning run did) and ends the agent under kill.
            what = (
                "is never allowed"
                if never_allowed(call.name, call.args)
                else "no promise allows it"
            )
            _say(
                f"sandbox learn: {call.text} by {call.who}: {what}; it failed with EPERM "
                f"while learning, as under violation: errno (under kill the agent is ended)"
            )
        for path in p.unexpressible:
            _say(f"sandbox learn: {path}: no unveil can name it (a /proc path of the agent)")
        if use.status != 0:
            _say(f"sandbox learn: the command exited {use.status}: the policy is for that run")
        result = LearnResult(text, use.status, p)
        if trim_lines and work is not None:
            _say("sandbox learn: --trim: running the command once without each line")
            p = trim(p, command, work, use.status)
            result = LearnResult(render(p), use.status, p)
        _write(result.text, out)
        if verify and work is not None:
            trial = try_policy(result.text, command, work.fresh(), use.status)
            result.verified = not trial.refusal
            if result.verified:
                result.verify_message = (
                    f"sandbox learn: verified: the command exits {trial.status} under the "
                    "learned policy, with no refusal"
                )
            else:
                result.verify_message = (
                    f"sandbox learn: verify FAILED: exit {trial.status} "
                    f"(the learning run: {use.status}); first refusal: {trial.refusal or '-'}"
                )
            _say(result.verify_message)
        return result
    finally:
        if work is not None:
            work.close()


def _write(text: str, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)


def _header(
    command: Sequence[str], cwd: str, use: Usage, obs: Observations, p: Proposal
) -> list[str]:
    import shlex

    lines = [
        f"Learned by `sandbox learn` from one run of: {shlex.join(command)}"[:200],
        f"in {cwd} (${{CWD}}): exit status {use.status}, {use.seconds:.2f} s, "
        f"{obs.tasks} {'process' if obs.tasks == 1 else 'processes and threads'}.",
        "Learning is not a sandbox: that run had every call allowed. Review before use;",
        "each line names the first call that needed it.",
    ]
    if obs.refused:
        lines.append(
            "The run made calls no promise allows (they failed with EPERM): "
            + ", ".join(sorted({c.name for c in obs.refused}))
        )
    if p.unexpressible:
        lines.append(
            f"Not expressible as unveil (/proc paths of its own processes): "
            f"{', '.join(p.unexpressible[:5])}"
        )
    if obs.notes:
        lines.append(f"Not recorded: {'; '.join(obs.notes[:3])}")
    return lines
