"""federation: a multi-datacenter control plane that places services under data-residency rules."""

__version__ = "0.1.0"
