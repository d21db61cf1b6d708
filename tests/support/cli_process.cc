#include "tests/support/cli_process.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace kvshare::testing {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

CliRun RunCli(const std::string& binary, const std::vector<std::string>& args,
              const std::string& stdin_text, const std::vector<std::string>& env,
              absl::Duration timeout) {
  static std::atomic<int> runs{0};
  const std::string base =
      absl::StrCat(::testing::TempDir(), "/kvshare-cli-", getpid(), "-", runs++);
  const std::string in_path = base + ".in", out_path = base + ".out", err_path = base + ".err";
  std::ofstream(in_path, std::ios::binary) << stdin_text;
  std::vector<std::string> argv_strings = {binary};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  const absl::Time start = absl::Now();
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* in = std::fopen(in_path.c_str(), "r");
    FILE* out = std::fopen(out_path.c_str(), "w");
    FILE* err = std::fopen(err_path.c_str(), "w");
    if (in == nullptr || out == nullptr || err == nullptr) _exit(126);
    dup2(fileno(in), 0);
    dup2(fileno(out), 1);
    dup2(fileno(err), 2);
    for (const std::string& e : env) {
      const size_t eq = e.find('=');
      setenv(e.substr(0, eq).c_str(), eq == std::string::npos ? "" : e.substr(eq + 1).c_str(), 1);
    }
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  CliRun run;
  const absl::Time end = start + timeout;
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (absl::Now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  run.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  run.out = Slurp(out_path);
  run.err = Slurp(err_path);
  for (const std::string& p : {in_path, out_path, err_path}) std::remove(p.c_str());
  return run;
}

}  // namespace kvshare::testing
