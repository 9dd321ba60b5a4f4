"""The model-aware load balancer: one endpoint in front of a fleet of Ollama servers."""
