"""The privileged parent: the launcher, its event loop, the answers to seccomp
notifications, the lock gate, the broker with its resources, and the audit log.

It never runs agent code and never trusts a byte from an agent.
"""
