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


def test_local_prometheus_discovers_what_the_pools_podmonitor_selects(tmp_path):
    from diffusion_operator import builders
    from diffusion_operator.spec import PoolSpec

    cfg = manifests.prometheus_config("1s", 9999, kubeconfig=tmp_path / "kc")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert "local" not in jobs, "the cluster's Prometheus has no file discovery"
    pods = jobs["diffusion-sampler-pods"]
    assert pods["kubernetes_sd_configs"] == [{"role": "pod", "kubeconfig_file": str(tmp_path / "kc")}]
    keep = {tuple(r["source_labels"]): r["regex"] for r in pods["relabel_configs"] if r.get("action") == "keep"}
    pool = {"apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "InferencePool",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {"modelRef": {"name": "m"}}}
    monitor = builders.monitor(pool, PoolSpec.from_body(pool["spec"]))
    (label,) = monitor["spec"]["selector"]["matchLabels"]
    assert keep[(f"__meta_kubernetes_pod_labelpresent_{label.replace('.', '_').replace('/', '_')}",)] == "true"
    assert keep[("__meta_kubernetes_pod_container_port_name",)] == monitor["spec"]["podMetricsEndpoints"][0]["port"]
    assert pods["metrics_path"] == monitor["spec"]["podMetricsEndpoints"][0]["path"]
    # the sampler's `endpoint` label must survive the target's `endpoint` label, in both
    assert pods["honor_labels"] is True and monitor["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    # the labels a PodMonitor target gets, which the pools' extraSelector and dashboards use
    targets = {r.get("target_label") for r in pods["relabel_configs"]}
    assert {"namespace", "pod", "container", "endpoint"} <= targets
    assert cfg["global"]["scrape_interval"] == "1s"


def test_a_prometheus_outside_a_cluster_can_read_target_files(tmp_path):
    cfg = manifests.prometheus_config("1s", 9999, targets_dir=tmp_path)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["local"]["file_sd_configs"][0]["files"] == [str(tmp_path / "*.json")]
    assert "diffusion-sampler-pods" not in jobs


def test_the_gateway_listener_is_traefiks_loopback_entry_point():
    static = manifests.traefik_static_config(port=18080, admin_port=18081)
    assert static["entryPoints"]["web"]["address"] == "127.0.0.1:18080"
    assert static["entryPoints"]["traefik"]["address"] == "127.0.0.1:18081"
    objs = {o["kind"]: o for o in manifests.gateway_objects(18080)}
    assert objs["GatewayClass"]["spec"]["controllerName"] == manifests.TRAEFIK_CONTROLLER
    (listener,) = objs["Gateway"]["spec"]["listeners"]
    assert listener["port"] == 18080 and listener["allowedRoutes"]["namespaces"]["from"] == "All"
    assert objs["Gateway"]["spec"]["gatewayClassName"] == objs["GatewayClass"]["metadata"]["name"]


def test_local_processes_get_least_privilege_not_wildcards():
    for rules in (manifests.TRAEFIK_RULES, manifests.PROMETHEUS_RULES):
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert not {"create", "delete", "patch"} & set(rule["verbs"])
    objs = {o["kind"]: o for o in manifests.service_account_access("traefik", "gw", manifests.TRAEFIK_RULES)}
    assert objs["ClusterRoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "traefik", "namespace": "gw"}]
    assert objs["Secret"]["type"] == "kubernetes.io/service-account-token"


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


def test_beside_a_real_node_simulated_nodes_take_only_pods_that_opt_in():
    nodes = manifests.cluster_nodes(1, 8, cpu_nodes=1, opt_in=True)
    for n in nodes:
        assert manifests.SIMULATED_TAINT in n["spec"]["taints"]
    assert all("taints" not in n["spec"] or manifests.SIMULATED_TAINT not in n["spec"]["taints"]
               for n in manifests.cluster_nodes(1, 8, cpu_nodes=1))


def test_real_node_listeners_are_loopback_and_its_network_adds_no_nat(tmp_path):
    kubelet = manifests.kubelet_config(port=1, healthz_port=2, runtime_socket=tmp_path / "s", ca_cert=tmp_path / "ca",
                                       root_dir=tmp_path, taints=[])
    assert kubelet["address"] == kubelet["healthzBindAddress"] == "127.0.0.1"
    assert kubelet["readOnlyPort"] == 0 and kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["failCgroupV1"] is False  # cgroup v1 machines need the opt-in
    toml = manifests.containerd_config(root=tmp_path / "r", state=tmp_path / "st", socket=tmp_path / "s",
                                       runc=tmp_path / "runc", runc_root=tmp_path / "rr", cni_bin_dir=tmp_path,
                                       cni_conf_dir=tmp_path)
    assert 'stream_server_address = "127.0.0.1"' in toml and f'sandbox_image = "{manifests.PAUSE_IMAGE}"' in toml
    plugin = manifests.cni_config(tmp_path)["plugins"][0]
    assert plugin["ipMasq"] is False and plugin["bridge"] == manifests.NODE_BRIDGE


def test_client_certificates_carry_the_node_identity(tmp_path):
    pki.ensure_pki(tmp_path)
    cert_path, _ = pki.ensure_client_cert(tmp_path, "kubelet", "system:node:localhost", "system:nodes")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:localhost"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"


def test_a_machine_that_cannot_run_containers_is_told_why(tmp_path):
    from diffusion_operator.devcluster import node

    missing = tmp_path / "no-such-runc"
    tools = node.NodeTools(containerd=missing, ctr=missing, runc=missing, crictl=missing, cni_bin_dir=tmp_path,
                           kubelet=missing, kube_proxy=missing, ip=missing, iptables_save=missing)
    with pytest.raises(node.NodeUnavailable, match="no-such-runc does not run here"):
        node.preflight(tools)
