"""The agent system (SPEC section 9): system files, the dispatcher, messages and their log."""
