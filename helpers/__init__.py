"""Measuring stars with machine learning: the code every chapter of the book shares.

Book: {ref}`page-intro`

Subpackages follow the book's parts (``apogee``, ``spectra``, ``survey``, ``rsca``, ``ppca``);
the README lists every module.  Importing any of them prints nothing and writes nothing.
"""
