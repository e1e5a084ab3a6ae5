"""Sortlab engine layer."""
