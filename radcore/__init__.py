"""radcore: a prepaid calling-card RADIUS server for VoIP carriers."""

__version__ = "0.1.0"
