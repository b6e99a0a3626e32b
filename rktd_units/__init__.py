"""rktd-units: rkt-style pods as native systemd services."""

__version__ = "0.1.0"
