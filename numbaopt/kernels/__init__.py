"""Compiled update kernels: ``cpu`` (@njit) and, imported lazily, ``cuda``."""
