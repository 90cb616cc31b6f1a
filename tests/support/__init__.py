"""Shared test code: fixtures and helpers. Every module here is registered as a pytest plugin
by tests/conftest.py, so a fixture defined in any of them is available to every test."""
