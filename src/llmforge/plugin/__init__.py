"""The plugin system: hook specifications, the manager and registries, the types a plugin implements."""
