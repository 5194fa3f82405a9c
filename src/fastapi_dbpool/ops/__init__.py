"""Facts about the server and the connection budget, shared by the start-up check and the CLI."""
