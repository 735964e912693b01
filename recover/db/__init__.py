"""Connections, schema detection by reflection, and cell discovery."""

from recover.db.engine import Database, open_database

__all__ = ["Database", "open_database"]
