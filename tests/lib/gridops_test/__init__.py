"""Shared test infrastructure of gridops.metal: namespaces, processes, artifacts."""
