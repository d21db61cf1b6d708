// Small helpers shared by the benchmark programs: timing, peak RSS of a child process, and
// JSON output. Benchmarks print a table and optionally write JSON; they never assert timings.
#pragma once

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>

#include "nlohmann/json.hpp"

namespace kvshare::bench {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Everything readable from `fd` until end of file; closes it.
inline std::string ReadAllAndClose(int fd) {
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) text.append(buf, size_t(n));
  close(fd);
  return text;
}

// Runs `body` in a forked child (so each configuration's peak RSS is its own), returning the
// JSON the child produced and adding "peak_rss_mib" from wait4's rusage.
inline nlohmann::json RunIsolated(const std::function<nlohmann::json()>& body) {
  int fds[2];
  if (pipe(fds) != 0) return {{"error", "pipe failed"}};
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const std::string out = body().dump();
    size_t off = 0;
    while (off < out.size()) {
      const ssize_t n = write(fds[1], out.data() + off, out.size() - off);
      if (n <= 0) break;
      off += size_t(n);
    }
    close(fds[1]);
    _exit(0);
  }
  close(fds[1]);
  const std::string text = ReadAllAndClose(fds[0]);
  int status = 0;
  struct rusage usage {};
  wait4(pid, &status, 0, &usage);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) j = {{"error", "child failed"}};
  j["peak_rss_mib"] = usage.ru_maxrss / 1024.0;  // ru_maxrss is in KiB on Linux
  return j;
}

inline void WriteJson(const std::string& path, const nlohmann::json& j) {
  if (path.empty()) return;
  std::ofstream(path) << j.dump(2) << "\n";
  std::fprintf(stderr, "wrote %s\n", path.c_str());
}

}  // namespace kvshare::bench
