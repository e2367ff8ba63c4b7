"""A client for the Kubernetes CRI v1 RuntimeService and the cache that names pods from it."""
