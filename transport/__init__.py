"""The wire: a versioned msgpack codec and the ZeroMQ transport."""
