"""Sortlab gui layer."""
