"""Local stand-ins for the clouds and a Kubernetes API, reached by the real SDKs over HTTP(S)."""
