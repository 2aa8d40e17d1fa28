"""Actors (pykka) that own the core, storage and sockets, passing batches with tell."""
