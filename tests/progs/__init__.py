"""Helper programs (C sources compiled at test time) and the shared kit of the sandbox tests."""
