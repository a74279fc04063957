"""Testing helpers for applications built on infrakit.

The backend contract suites live in :mod:`infrakit.testing.contracts`: the
same tests the kit runs against its own backends, as base classes a custom
backend's test module can subclass.
"""
