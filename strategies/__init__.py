"""Server-side Flower strategies for ATM and the registry of merge plugins."""
