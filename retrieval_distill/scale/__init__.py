"""Ray backends for teacher scoring and corpus encoding beyond one machine."""
