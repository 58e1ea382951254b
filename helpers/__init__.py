"""Shared code of the book."""
