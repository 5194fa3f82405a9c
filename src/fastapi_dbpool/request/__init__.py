"""The request path: session and connection dependencies, direct connections, sync sessions."""
