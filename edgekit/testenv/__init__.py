"""Real local services for tests and demos: mosquitto, an OCI registry, a Kubernetes control plane
with KWOK nodes, and the fleet simulator. Everything binds 127.0.0.1 on free ports."""
