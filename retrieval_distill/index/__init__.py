"""FAISS indexes: build, manifest, versioned store with atomic swap, rebuild jobs."""
