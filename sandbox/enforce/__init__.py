"""The enforcement side: the promise table and its rules, the plan, and the one code path
that applies it (`apply`), over seccomp, Landlock, mounts, cgroups and process hygiene.
"""
