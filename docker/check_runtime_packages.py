#!/usr/bin/env python3
"""Checks that a Dockerfile's runtime stage installs what its binaries need, on Debian.

For each binary: the shared libraries it loads (ldd), the Debian package that ships each one
(dpkg -S), and whether that package is in the dependency closure (apt-cache depends --recurse)
of the packages the Dockerfile's runtime stage installs. A library from no installed package,
or a package outside the closure, is a missing runtime dependency. Run on Debian bookworm (the
images' base) with the binaries built there.

  docker/check_runtime_packages.py DOCKERFILE BINARY...    exit 1 naming what is missing
"""
import os
import re
import subprocess
import sys


def runtime_packages(dockerfile):
    """The packages of the last `apt-get install` before the first COPY --from (run stage)."""
    text = open(dockerfile).read().replace("\\\n", " ")
    stages = re.split(r"^FROM\s", text, flags=re.M)
    for stage in stages[1:]:
        if not stage.startswith(("debian:bookworm-slim", "run-cpu", "debian:bookworm-slim AS")):
            continue
        m = re.search(r"apt-get install ([^&]*)", stage)
        if m:
            return [w for w in m.group(1).split() if not w.startswith("-")]
    sys.exit(f"{dockerfile}: no apt-get install in a debian:bookworm-slim stage")


def closure(packages):
    out = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + packages,
        capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line and not line[0].isspace()}


def package_of(path):
    candidates = [path, os.path.realpath(path)]
    candidates += [c.replace("/usr/lib/", "/lib/", 1) for c in list(candidates)]
    for c in candidates:
        r = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0]
    return None


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    dockerfile, binaries = sys.argv[1], sys.argv[2:]
    wanted = runtime_packages(dockerfile)
    have = closure(wanted)
    problems = []
    for binary in binaries:
        ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for lib, path in re.findall(r"^\s*(\S+) => (\S+)", ldd, flags=re.M):
            if path == "not":
                problems.append(f"{binary}: {lib} not found on this machine")
                continue
            pkg = package_of(path)
            if pkg is None:
                problems.append(f"{binary}: {path} belongs to no Debian package")
            elif pkg.split(":")[0] not in have:
                problems.append(f"{binary}: needs {lib} from {pkg}, which {dockerfile} does not "
                                "install (nor anything it installs depends on)")
    for p in problems:
        print(p)
    if not problems:
        print(f"{dockerfile}: the runtime stage's {len(wanted)} packages "
              f"({len(have)} with dependencies) cover {len(binaries)} binaries")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
