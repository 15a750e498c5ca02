"""The embedded local cluster: a real Kubernetes control plane without Docker.

``diffusion-operator dev up`` and the test suite's session fixture both use this package to
run etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (simulated GPU nodes)
and Prometheus as local processes bound to 127.0.0.1.

Modules:
- ``toolchain``: fetches and builds the binaries once, cached by version outside the repo.
- ``pki``: the CA, serving and client certificates and the service-account key.
- ``manifests``: pure builders for the simulated GPU nodes and the configs we write.
- ``cluster``: starts, checks and stops the processes of one cluster (by pid).
"""
