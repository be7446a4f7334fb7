"""The routing model, free of Kubernetes types (imports nothing from the project)."""
