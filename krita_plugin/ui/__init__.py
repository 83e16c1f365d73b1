"""The docker's widgets (Qt through `krita_plugin.qt`); they bind to `state.DockerState`
and never touch the network."""
