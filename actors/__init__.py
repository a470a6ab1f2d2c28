"""Ray roles: small classes that wrap `sa_ray` library code as Ray actors (or Ray Data actor pools)."""
