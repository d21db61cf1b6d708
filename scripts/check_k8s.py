#!/usr/bin/env python3
"""Checks the Kubernetes manifests in deploy/k8s/ without a cluster.

`kubectl apply --dry-run=client` needs an API server to download the schema from, so this does
the schema part itself, against the official `kubernetes` Python client's models (generated from
the Kubernetes OpenAPI spec): every field of every object must be one the API knows, with the
right type, and every required field present. Then kvshare's own rules: each workload's
containers have gRPC readiness and liveness probes, its pods carry the Prometheus scrape
annotations for a port they expose, the search service keeps its data on a claimed volume,
Services and the PodDisruptionBudget select pods that exist, and every Service targetPort names
a container port. Also that kustomization.yaml lists every manifest.

  scripts/check_k8s.py [DIR]     exit 1 listing every problem
"""
import os
import re
import sys

import yaml

try:
    from kubernetes import client
except ImportError as e:
    sys.exit(f"check_k8s: {e}; install it with `python3 -m pip install kubernetes` "
             "(scripts/setup.sh does)")

MODELS = {
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("v1", "ConfigMap"): "V1ConfigMap",
}


def check_schema(value, type_name, path, problems):
    """Walks `value` against the client model type `type_name` (e.g. "V1PodSpec")."""
    if value is None:
        return
    # Both spellings of container types: "list[X]"/"dict(str, X)" (older clients) and
    # "List[X]"/"Dict[str, X]" (newer).
    if type_name.startswith(("list[", "List[")):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            check_schema(v, type_name[5:-1], f"{path}[{i}]", problems)
    elif type_name.startswith(("dict(", "Dict[")):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        inner = type_name[type_name.index(",") + 1:-1].strip()
        for k, v in value.items():
            check_schema(v, inner, f"{path}.{k}", problems)
    elif type_name == "str":
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
    elif type_name == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{path}: expected an integer, got {value!r}")
    elif type_name == "bool":
        if not isinstance(value, bool):
            problems.append(f"{path}: expected a boolean, got {value!r}")
    elif type_name in ("object", "float", "datetime", "date"):
        pass  # IntOrString and friends
    else:
        model = getattr(client.models, type_name, None)
        if model is None:
            problems.append(f"{path}: no model {type_name} in the kubernetes client")
            return
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object ({type_name}), got {value!r}")
            return
        by_json = {j: p for p, j in model.attribute_map.items()}
        for key, v in value.items():
            if key not in by_json:
                problems.append(f"{path}.{key}: not a field of {type_name}")
                continue
            check_schema(v, model.openapi_types[by_json[key]], f"{path}.{key}", problems)


def check_required(doc, model_name, where, problems):
    """The client's own deserializer refuses a missing required field (ValueError)."""
    api = client.ApiClient()
    try:
        api._ApiClient__deserialize(doc, model_name)
    except (ValueError, TypeError) as e:
        problems.append(f"{where}: {e}")


def load(directory):
    docs = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".yaml") or name == "kustomization.yaml":
            continue
        with open(os.path.join(directory, name)) as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    docs.append((f"{name}#{i}", doc))
    return docs


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_rules(docs, problems):
    workloads = [(w, d) for w, d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    pod_labels = [d["spec"]["template"]["metadata"].get("labels", {}) for _, d in workloads]
    port_names = set()
    for where, d in workloads:
        pod = d["spec"]["template"]
        ports = {}
        for c in pod["spec"]["containers"]:
            for p in c.get("ports", []):
                ports[p.get("name")] = p["containerPort"]
            for probe in ("readinessProbe", "livenessProbe"):
                if "grpc" not in c.get(probe, {}):
                    problems.append(f"{where}: container {c['name']} has no gRPC {probe}")
            if not c.get("resources", {}).get("requests"):
                problems.append(f"{where}: container {c['name']} requests no resources")
        port_names |= set(ports)
        ann = pod["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") != "true":
            problems.append(f"{where}: pods lack prometheus.io/scrape: \"true\"")
        elif int(ann.get("prometheus.io/port", 0)) not in ports.values():
            problems.append(f"{where}: prometheus.io/port {ann.get('prometheus.io/port')} is "
                            "not a container port")
        if not matches(d["spec"]["selector"]["matchLabels"], pod["metadata"].get("labels", {})):
            problems.append(f"{where}: selector does not match the pod template's labels")
        if d["kind"] == "StatefulSet":
            claims = {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
            mounts = {m["name"] for c in pod["spec"]["containers"]
                      for m in c.get("volumeMounts", [])}
            if not claims or not claims <= mounts:
                problems.append(f"{where}: the data dir must be a mounted volumeClaimTemplate")
    for where, d in docs:
        if d["kind"] == "Service":
            if not any(matches(d["spec"]["selector"], l) for l in pod_labels):
                problems.append(f"{where}: Service {d['metadata']['name']} selects no pods")
            for p in d["spec"]["ports"]:
                t = p.get("targetPort")
                if isinstance(t, str) and t not in port_names:
                    problems.append(f"{where}: targetPort {t} is no container port's name")
        if d["kind"] == "PodDisruptionBudget":
            if not any(matches(d["spec"]["selector"]["matchLabels"], l) for l in pod_labels):
                problems.append(f"{where}: PodDisruptionBudget selects no pods")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "k8s")
    problems = []
    docs = load(directory)
    if not docs:
        problems.append(f"{directory}: no manifests")
    for where, doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in MODELS:
            problems.append(f"{where}: {key[0]} {key[1]} is not a kind this check knows")
            continue
        check_schema(doc, MODELS[key], f"{where}", problems)
        check_required(doc, MODELS[key], where, problems)
    if not problems:
        check_rules(docs, problems)
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        listed = set(yaml.safe_load(f).get("resources", []))
    files = {w.split("#")[0] for w, _ in docs}
    for missing in sorted(files - listed):
        problems.append(f"kustomization.yaml: does not list {missing}")
    for extra in sorted(listed - files):
        problems.append(f"kustomization.yaml: lists {extra}, which does not exist")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"check_k8s: {len(docs)} objects in {os.path.normpath(directory)} pass "
          f"(kubernetes client {client.__version__ if hasattr(client, '__version__') else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
