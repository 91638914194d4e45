"""The only modules that import Ray: the application, deployments, actors, local run."""
