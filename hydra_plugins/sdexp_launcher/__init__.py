"""sdexp's Hydra launcher plugins (Hydra finds them in the ``hydra_plugins`` namespace package)."""
