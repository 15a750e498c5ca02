"""Pure parts of the local cluster: node shapes, kubeconfig, PKI, the Kubernetes wrapper module."""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from diffusion_operator.devcluster import manifests, pki, toolchain

pytestmark = pytest.mark.unit


def test_gpu_node_is_tainted_labelled_and_has_gpus():
    node = manifests.simulated_node("gpu-node-0", gpus=8, gpu_product="NVIDIA-H200")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert node["metadata"]["annotations"][manifests.KWOK_ANNOTATION] == "fake"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


def test_cpu_node_has_no_gpu_and_no_taint():
    node = manifests.simulated_node("cpu-node-0")
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    assert "taints" not in node["spec"]


def test_cluster_nodes_counts():
    nodes = manifests.cluster_nodes(3, 4, cpu_nodes=1)
    gpu = [n for n in nodes if "nvidia.com/gpu" in n["status"]["capacity"]]
    assert [n["metadata"]["name"] for n in gpu] == ["gpu-node-0", "gpu-node-1", "gpu-node-2"]
    assert {n["status"]["capacity"]["nvidia.com/gpu"] for n in gpu} == {"4"}
    assert len(nodes) == 4


def test_pki_chain_and_identities(tmp_path):
    keys = pki.ensure_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
    srv = x509.load_pem_x509_certificate(keys.serving_cert.read_bytes())
    admin = x509.load_pem_x509_certificate(keys.admin_cert.read_bytes())
    srv.verify_directly_issued_by(ca)
    admin.verify_directly_issued_by(ca)
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    orgs = [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    # the key pair loads as a client identity
    ctx = ssl.create_default_context(cafile=str(keys.ca_cert))
    ctx.load_cert_chain(str(keys.admin_cert), str(keys.admin_key))
    # a second call reuses the files instead of rotating them under a running apiserver
    before = keys.ca_cert.read_bytes()
    pki.ensure_pki(tmp_path)
    assert keys.ca_cert.read_bytes() == before


def test_kubeconfig_embeds_credentials(tmp_path):
    keys = pki.ensure_pki(tmp_path)
    kc = manifests.admin_kubeconfig("https://127.0.0.1:6443", keys.ca_cert, keys.admin_cert, keys.admin_key, "dev")
    assert kc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert kc["current-context"] == "diffusion-dev"
    assert kc["users"][0]["user"]["client-key-data"]


def test_prometheus_scrapes_file_targets(tmp_path):
    cfg = manifests.prometheus_config("1s", tmp_path, 9999)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["local"]["file_sd_configs"][0]["files"] == [str(tmp_path / "*.json")]
    assert cfg["global"]["scrape_interval"] == "1s"


def test_wrapper_gomod_pins_every_staging_module():
    upstream = """module k8s.io/kubernetes

go 1.26.0

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/cri-streaming => ./staging/src/k8s.io/cri-streaming
)
"""
    out = toolchain._k8s_wrapper_gomod(upstream, "v1.36.3")
    assert "require k8s.io/kubernetes v1.36.3" in out
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3" in out
    assert "\tk8s.io/cri-streaming => k8s.io/cri-streaming v0.36.3" in out
    assert "go 1.26.0" in out


def test_version_is_stamped_for_both_version_packages():
    flags = toolchain._version_ldflags("v1.36.3")
    assert "k8s.io/component-base/version.gitVersion=v1.36.3" in flags
    assert "k8s.io/client-go/pkg/version.gitMinor=36" in flags
