"""Flower ClientApps: thin adapters from Flower messages to ``atm_fl``."""
