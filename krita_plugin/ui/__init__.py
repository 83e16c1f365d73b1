"""The docker's widgets (PyQt5); they bind to `state.DockerState` and never touch the network."""
