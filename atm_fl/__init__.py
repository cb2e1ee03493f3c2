"""atm-fl: Alternating Tuning and Merging (ATM) as a Flower federated app."""

__version__ = "0.1.0"
