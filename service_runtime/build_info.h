// What build a binary is: the project version (CMake's project(VERSION)) and the git commit
// it was configured from (`git rev-parse --short HEAD` when CMake ran; "unknown" outside a git
// checkout; -DKVSHARE_GIT_COMMIT=... overrides it, e.g. in an image built without .git).
#pragma once

#include <string>

namespace kvshare::runtime {

const char* ProjectVersion();  // "0.1.0"
const char* GitCommit();       // "a4004e9" or "unknown"
// "<program> <version> (commit <commit>)": what --version prints.
std::string VersionLine(const std::string& program);

}  // namespace kvshare::runtime
