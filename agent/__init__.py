"""agent/: the brain. The policy service (a Ray actor answering over ZeroMQ), its wire protocol, and its Python client."""
