"""Warm launches: `sandbox serve`, a resident launcher per user, and its clients.

protocol: the socket's location and the messages on it (shared by both clients and the
server); client: the Python client (`sandbox run` uses it when a server is reachable);
client.c: the compiled client ci/setup builds; server: the accept loop and the checks of
each client; launch: the per-launch process, which takes the client's state and runs the
cold `sandbox run` code.
"""
