"""State machine backends: the protocol and the bundled implementations."""
