#!/usr/bin/env python3
"""Checks the dependency rule of docs/ARCHITECTURE.md over every #include in the tree.

The build already refuses an #include of a module a target may not see (each library's include
path holds only its allowed modules: cmake/KvshareLayering.cmake). This check covers what an
include path cannot: system headers a layer must not use (gRPC or protobuf in common/), the
split of search_service/ into the library and server/, and calls a core layer must not make
(a subprocess from common/).

  scripts/check_deps.py             check the tree; exit 1 listing every violation
  scripts/check_deps.py --self-test check that a planted violation of each rule is caught
"""
import argparse
import os
import re
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')
SOURCE_EXT = (".h", ".cc", ".cu", ".cuh")

# Project modules, by the first path segment of an #include ("search_service/server" first).
MODULES = ["search_service/server", "search_service", "inference_service", "service_runtime",
           "proto", "common", "kernels", "tools", "bench", "tests"]

# Headers of libraries that only the service layers may use.
WIRE_HEADERS = re.compile(r"^(grpc|grpcpp|grpc\+\+|google/protobuf|kvshare/v1/|prometheus/|"
                          r"httplib\.h|spdlog/)")
CUDA_HEADERS = re.compile(r"^(cuda|cublas|cuda_runtime|cuda_fp16|cuda_bf16)")
SUBPROCESS = re.compile(r"\b(popen|system|fork|execv|execvp|execl|posix_spawn)\s*\(")

# layer -> (project modules it may include, whether wire headers are allowed)
RULES = {
    "kernels": ({"kernels"}, False),
    "common": ({"kernels", "common"}, False),
    "search_service": ({"kernels", "common", "search_service"}, False),
    "proto": ({"kernels", "common", "proto", "search_service"}, True),
    "service_runtime": ({"kernels", "common", "service_runtime"}, True),
    "search_service/server": ({"kernels", "common", "search_service", "search_service/server",
                               "proto", "service_runtime"}, True),
    "inference_service": ({"kernels", "common", "proto", "service_runtime",
                           "inference_service"}, True),
}
# Layers that must not start processes (the core stays free of environment probing).
NO_SUBPROCESS = {"kernels", "common", "search_service"}


def module_of(path):
    for m in MODULES:
        if path == m or path.startswith(m + "/"):
            return m
    return None


def check_file(root, rel):
    layer = module_of(rel)
    if rel == "search_service/main.cc":  # kvshare-search's main: the server's layer
        layer = "search_service/server"
    if layer not in RULES:
        return []
    if layer == "kernels" and rel.startswith("kernels/cuda/"):
        allowed, wire, cuda = {"kernels"}, False, True
    else:
        (allowed, wire), cuda = RULES[layer], False
    problems = []
    with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            m = INCLUDE.match(line)
            if m:
                inc = m.group(1)
                target = module_of(inc)
                if target is not None and target not in allowed:
                    problems.append(f"{rel}:{n}: {layer}/ may not include {inc} "
                                    f"(allowed: {', '.join(sorted(allowed))})")
                elif WIRE_HEADERS.match(inc) and not wire:
                    problems.append(f"{rel}:{n}: {layer}/ may not include {inc} "
                                    "(gRPC, protobuf, metrics and logging belong to the services)")
                elif CUDA_HEADERS.match(inc) and not cuda:
                    problems.append(f"{rel}:{n}: {layer}/ may not include {inc} "
                                    "(CUDA lives in the kernels/cuda plugin only)")
                continue
            code = line.split("//", 1)[0]
            if layer in NO_SUBPROCESS and SUBPROCESS.search(code):
                problems.append(f"{rel}:{n}: {layer}/ may not start a process "
                                "(locating files belongs to service_runtime/locate.h)")
    return problems


def check_tree(root):
    problems = []
    for top in ("kernels", "common", "search_service", "proto", "service_runtime",
                "inference_service"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if name.endswith(SOURCE_EXT):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    problems += check_file(root, rel)
    return problems


def self_test():
    planted = {
        "kernels/a.h": '#include "common/engine/engine.h"\n',
        "common/b.cc": '#include "grpcpp/grpcpp.h"\n',
        "common/c.cc": '#include "search_service/calibration.h"\n',
        "common/d.cc": 'int f() { return system("python3"); }\n',
        "search_service/e.cc": '#include "search_service/server/search_server.h"\n',
        "search_service/f.cc": '#include "kvshare/v1/search.pb.h"\n',
        "search_service/server/g.cc": '#include "inference_service/scheduler.h"\n',
        "inference_service/h.cc": '#include "search_service/calibration.h"\n',
        "common/i.cc": '#include "cuda_runtime.h"\n',
    }
    clean = {
        "common/ok.cc": '#include "kernels/backend.h"\n#include <vector>\n// system("x")\n',
        "search_service/server/ok.cc": '#include "grpcpp/grpcpp.h"\n#include "proto/wire/x.h"\n',
        "kernels/cuda/ok.cu": '#include "cuda_runtime.h"\n#include "kernels/backend.h"\n',
    }
    with tempfile.TemporaryDirectory() as root:
        for rel, text in {**planted, **clean}.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
        found = check_tree(root)
    caught = {p.split(":", 1)[0] for p in found}
    missed = sorted(set(planted) - caught)
    false_alarms = sorted(caught - set(planted))
    for rel in missed:
        print(f"self-test: planted violation not caught: {rel}")
    for rel in false_alarms:
        print(f"self-test: clean file reported: {rel}")
    if missed or false_alarms:
        return 1
    print(f"self-test: {len(planted)} planted violations caught, {len(clean)} clean files pass")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", action="store_true",
                        help="check that a planted violation of each rule is caught")
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."),
                        help="repository root (default: this script's parent folder)")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    problems = check_tree(os.path.abspath(args.root))
    for p in problems:
        print(p)
    if problems:
        print(f"check_deps: {len(problems)} violation(s) of the dependency rule "
              "(docs/ARCHITECTURE.md)")
        return 1
    print("check_deps: the dependency rule holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
