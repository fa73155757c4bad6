"""The library version, recorded in every artifact emolib writes."""

__version__ = "0.1.0"
