"""Test suite of ``recover``; a package so that ``from tests.helpers import ...`` works."""
