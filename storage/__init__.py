"""Sortlab storage layer."""
