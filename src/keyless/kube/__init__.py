"""The Kubernetes side: pure manifests, the KubeSide interface, and its cluster and render implementations."""
