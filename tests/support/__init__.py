"""Helpers the tests share: fixtures, fake backends, worker processes, worlds."""
