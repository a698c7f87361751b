"""Tools around policies: learning one from a run (learn, observe, propose) and exporting
one to other engines (export)."""
