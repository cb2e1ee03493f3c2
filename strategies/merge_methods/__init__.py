"""atm-fl's own merge methods, one module each (registered as entry points in pyproject.toml).

Each module defines one ``MergeMethod`` object (``atm_fl.plugins``) named like the module,
with its test beside it (``test_<module>.py``). The arithmetic lives in ``atm_fl.merge``;
a module here declares the method's name, parameters, defaults and checks.
"""
