"""recover: bring back the deleted Nova flavors and Glance images that live instances still use."""

__version__ = "0.1.0"
